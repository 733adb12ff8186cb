"""The shipped nano SDXL: loaded by the same code as the released SDXL, small, and working."""

import numpy as np
import pytest
import torch

import sdxl_edu
from sdxl_edu import load_pipeline
from sdxl_edu.nano import NANO_BASE, NANO_REFINER, REFINER_FILE, WEIGHTS
from sdxl_edu.nano.classifiers import load_classifier, load_evaluator
from sdxl_edu.nano.data import COLOURS, SHAPES
from sdxl_edu.nano.metrics import read


@pytest.fixture(scope="module")
def nano():
    return load_pipeline()


def test_default_pipeline_is_nano_through_the_released_sdxl_code_path(monkeypatch):
    from sdxl_edu.loading import build, single_file

    calls = []
    for module, name in ((sdxl_edu.loading, "load_single_file"), (single_file, "detect_family"),
                         (single_file, "read_unet_config"), (build, "check_keys")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    pipe = load_pipeline()
    assert calls[:3] == ["load_single_file", "detect_family", "read_unet_config"] and "check_keys" in calls
    assert pipe.kind == "base" and pipe.unet_config == NANO_BASE and pipe.source.endswith("nano_sdxl_base.safetensors")
    assert pipe.schedule.prediction_type == "v_prediction" and pipe.schedule.rescale_betas_zero_snr
    refiner = load_pipeline(REFINER_FILE)
    assert refiner.kind == "refiner" and refiner.unet_config == NANO_REFINER and refiner.text_encoder is None


def test_weights_fit_the_budget():
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"{total / 2**20:.1f} MiB"


def test_latents_have_unit_variance_after_scaling(nano):
    from sdxl_edu.nano.data import make_sample
    rng = np.random.default_rng(0)
    images = torch.stack([torch.from_numpy(make_sample(rng, (64, 64)).image) for _ in range(64)])
    with torch.no_grad():
        z = nano.vae.encode(images.permute(0, 3, 1, 2).float() / 127.5 - 1).mean * nano.vae.scaling_factor
    assert 0.8 < z.std().item() < 1.25


def test_nano_draws_the_colour_it_is_asked(nano):
    prompts = [f"a {c} {s}" for s in SHAPES for c in COLOURS]
    images = nano(prompts, num_inference_steps=20, seed=0, progress=False).images
    seen = read(load_evaluator(), images)["colour"]
    assert np.mean(seen == np.array([list(COLOURS).index(p.split()[1]) for p in prompts])) >= 0.9


def test_the_classifier_reads_noisy_latents(nano):
    classifier = load_classifier()
    out = nano(["a red circle", "a blue square"], num_inference_steps=20, seed=1, output_type="latent",
               progress=False)
    logits = classifier(out.latents, torch.tensor([0, 0]))
    assert logits["colour"].argmax(-1).tolist() == [list(COLOURS).index("red"), list(COLOURS).index("blue")]


def test_micro_conditioning_reaches_the_unet(nano):
    """The prototype's size and crop conditioning 'had no effect': check each number moves eps."""
    text = nano.encode_prompt("a red circle", do_classifier_free_guidance=False)
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    from sdxl_edu.model.conditioning import micro_conditioning_ids, vector_y

    def eps(original, crop, target=(64, 64)):
        with torch.no_grad():
            return nano.unet(x, t, text.context, vector_y(text.pooled, micro_conditioning_ids(original, crop, target)))

    reference = eps((64, 64), (0, 0))
    for changed in (eps((16, 16), (0, 0)), eps((64, 128), (0, 0)), eps((64, 64), (0, 32)), eps((64, 64), (0, 0), (48, 80))):
        assert (changed - reference).abs().mean() > 1e-3 * reference.abs().mean()


def test_the_evaluator_reads_every_attribute_of_fresh_pictures():
    """The benchmark and the lessons are only as good as their judge: pictures it never saw."""
    from sdxl_edu.nano.metrics import evaluator_accuracy

    accuracy = evaluator_accuracy(load_evaluator(), n=200, seed=20_000)
    assert min(accuracy.values()) >= 0.9, accuracy


def test_the_refiner_follows_its_aesthetic_score(nano):
    """Told a low score, the refiner degrades the picture; told a high one, it does not."""
    refiner = load_pipeline(REFINER_FILE)
    prompts = [f"a {c} {s}" for s in SHAPES for c in COLOURS]
    base = nano(prompts, num_inference_steps=20, seed=3, progress=False).images
    evaluator = load_evaluator()
    degradation = {score: read(evaluator, refiner(prompts, image=base, strength=0.2, num_inference_steps=20,
                                                  aesthetic_score=score, seed=3, progress=False).images)
                   ["degradation"].mean() for score in (6.0, 2.5)}
    assert degradation[2.5] > degradation[6.0] + 0.02, degradation
