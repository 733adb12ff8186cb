"""nano Reimagine's benchmark checked on two stand-in generators whose answers are known:
one that returns the input picture itself (faithful, nothing moved: img2img at strength 0)
and one that redraws the input's objects wherever it likes (faithful, layout free: what a
perfect variation model does). The instrument must tell them apart, with room to certify
the targets (faithful >= 85%, layout changed >= 50%)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sdxl_edu.nano.reimagine_bench import input_scenes, judge, variations
from sdxl_edu.nano.bench import phrase
from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.classifiers import SceneEvaluator
from sdxl_edu.nano.stages import trained
from sdxl_edu.nano.scenes import render_caption

PACKED = Path(__file__).parent.parent / "training" / "nano2"


@pytest.fixture(scope="module")
def evaluator():
    return trained(Run(PACKED, seed=0), "evaluator", SceneEvaluator())  # the EMA weights it packed


class Copier:
    """Returns its input pictures: every object kept, none moved."""

    def __call__(self, images, seed=0, **kwargs):
        return SimpleNamespace(images=list(images))


class Redrawer:
    """Redraws each input's objects (shape and colour) at positions of its own choosing."""

    def __init__(self, scenes):
        self.captions = {s.image.tobytes(): " and ".join(phrase(o.shape, o.colour) for o in s.objects) for s in scenes}

    def __call__(self, images, seed=0, **kwargs):
        rng = np.random.default_rng(seed)
        return SimpleNamespace(images=[Image.fromarray(render_caption(rng, self.captions[np.asarray(im).tobytes()])
                                                       .image) for im in images])


def test_the_benchmark_tells_a_copy_from_a_variation(evaluator):
    scenes = input_scenes(40)
    copied = judge(evaluator, scenes, variations(Copier(), scenes, seeds=2))
    redrawn = judge(evaluator, scenes, variations(Redrawer(scenes), scenes, seeds=2))
    assert copied["faithful"]["rate"] >= 0.925 and redrawn["faithful"]["rate"] >= 0.925, (copied, redrawn)
    assert copied["layout_changed"]["rate"] == 0.0 and copied["diversity"] == 0.0, copied
    assert redrawn["layout_changed"]["low"] >= 0.5 and redrawn["diversity"] > 0.05, redrawn
    for result in (copied, redrawn):  # every picture counted once, under its input's number of objects
        by_count = result["faithful_by_objects"]
        assert set(by_count) == {"1_object", "2_objects"}, by_count
        assert sum(r["n"] for r in by_count.values()) == result["faithful"]["n"], by_count
        hits = sum(round(r["rate"] * r["n"]) for r in by_count.values())
        assert hits == round(result["faithful"]["rate"] * result["faithful"]["n"]), (by_count, result["faithful"])
