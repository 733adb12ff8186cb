"""nano SDXL 2's scenes: captions true to the picture after the crop, objects apart, SDXL's
metadata, and the mix of one, two and three objects."""

from itertools import permutations

import numpy as np
import pytest

from sdxl_edu.nano.data import COLOURS, PHRASES, POSITIONS, SHAPES, SIZES, position_of
from sdxl_edu.nano.classifiers import pair_classes, presence
from sdxl_edu.nano.scenes import BUCKETS, LABELS, OBJECT_COUNTS, captions_from_labels, make_scene


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(321)
    return [make_scene(rng, BUCKETS[i % 3]) for i in range(900)]


def described(phrase: str) -> dict:
    """The attributes one phrase of a caption names ('a small red circle on the left')."""
    words = phrase.split()
    return {"shape": next(s for s in SHAPES if s in words),
            "colour": next((c for c in COLOURS if c in words), None),
            "size": next((z for z in SIZES if z in words), None),
            "position": next((p for p in POSITIONS if PHRASES[p] in phrase), None)}


def test_same_seed_same_scene():
    a, b = make_scene(np.random.default_rng(5), (96, 160)), make_scene(np.random.default_rng(5), (96, 160))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.object_map, b.object_map) and a.caption == b.caption


def test_captions_name_every_object_at_least_half_visible_with_its_attributes(scenes):
    for s in scenes:
        named = [o for o in s.objects if o.named]
        assert all(o.named == (o.visible >= 0.5) for o in s.objects)
        phrases = s.caption.split(" and ")
        assert len(phrases) == len(named) >= 1
        fits = [[o.shape == d["shape"] and d["colour"] in (None, o.colour) and d["size"] in (None, o.size)
                 and d["position"] in (None, o.position) for o in named] for d in map(described, phrases)]
        # each phrase describes its own object: some one-to-one assignment fits them all
        assert any(all(fits[i][j] for i, j in enumerate(order)) for order in permutations(range(len(named)))), s


def test_positions_come_from_the_final_crop(scenes):
    for s in scenes:
        for k, o in enumerate(s.objects, 1):
            if o.named:
                assert o.position == position_of(s.object_map == k)


def test_objects_do_not_overlap_and_every_pixel_has_one_owner(scenes):
    for s in [s for s in scenes if min(s.original_size) >= min(s.target_size)]:  # not blurred by upscaling
        for k in range(1, len(s.objects) + 1):
            ys, xs = np.nonzero(s.object_map == k)
            if s.objects[k - 1].visible > 0.5 and len(ys):
                colour = np.array(COLOURS[s.objects[k - 1].colour])
                inner = s.image[ys, xs].astype(int)  # the object's pixels are near its colour (jitter 12, edges)
                assert np.median(np.abs(inner - colour).max(1)) <= 14


def test_the_mix_of_objects_and_every_attribute_occur(scenes):
    counts = np.bincount([len(s.objects) for s in scenes], minlength=4)[1:] / len(scenes)
    expected = np.array(list(OBJECT_COUNTS.values()))
    assert np.abs(counts - expected).max() < 0.1, counts  # placement seldom drops an object
    labels = np.concatenate([s.labels for s in scenes])
    labels = labels[labels[:, 0] >= 0]
    for i, values in enumerate((SHAPES, COLOURS, POSITIONS, SIZES)):
        share = np.bincount(labels[:, i], minlength=len(values)) / len(labels)
        assert share.min() > 0.05, (LABELS[i], share)


def test_sdxl_metadata(scenes):
    for s in scenes:
        assert s.image.shape[:2] == s.target_size == s.object_map.shape and s.target_size in BUCKETS
        h, w = s.original_size
        scale = max(s.target_size[0] / h, s.target_size[1] / w)
        assert 0 <= s.crop_top_left[0] <= round(h * scale) - s.target_size[0]
        assert 0 <= s.crop_top_left[1] <= round(w * scale) - s.target_size[1]
        if s.framed:
            assert s.crop_top_left == (0, 0) and all(o.visible == 1.0 for o in s.objects)
    assert max(max(s.crop_top_left) / min(s.target_size) for s in scenes) >= 0.5


def test_labels_give_back_captions_and_the_classifiers_targets(scenes):
    s = next(s for s in scenes if len(s.objects) == 3 and all(o.named for o in s.objects))
    caption = captions_from_labels(np.random.default_rng(0), s.labels)
    assert len(caption.split(" and ")) == 3
    classes = pair_classes(s.object_map, s.labels)
    for k, o in enumerate(s.objects, 1):
        assert (classes[s.object_map == k] == 1 + SHAPES.index(o.shape) * 5 + list(COLOURS).index(o.colour)).all()
    assert presence(s.labels[None]).sum() == len({(o.shape, o.colour) for o in s.objects})
