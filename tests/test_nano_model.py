"""The shipped nano SDXL: loaded by the same code as the released SDXL, small, and working."""

import numpy as np
import pytest
import torch

import sdxl_edu
from sdxl_edu import load_pipeline
from sdxl_edu.nano import NANO_BASE, NANO_REFINER, REFINER_FILE, WEIGHTS
from sdxl_edu.nano.bench import reading_accuracy
from sdxl_edu.nano.classifiers import load_classifier, load_evaluator, wanted
from sdxl_edu.nano.data import COLOURS, SHAPES
from sdxl_edu.nano.metrics import to_tensor
from sdxl_edu.nano.scene_reading import read_objects
from sdxl_edu.nano.scenes import BUCKETS, make_scene


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
    assert pipe.default_size == 128 and pipe.vae_scale_factor == 8
    refiner = load_pipeline(REFINER_FILE)
    assert refiner.kind == "refiner" and refiner.unet_config == NANO_REFINER and refiner.text_encoder is None
    assert refiner.schedule.prediction_type == "epsilon"  # SDXL's own: the refiner never sees t >= 200


def test_weights_fit_the_budget():
    reimagine = (WEIGHTS / "nano_reimagine.safetensors").stat().st_size
    total = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    assert total - reimagine <= 40 * 2**20, f"nano SDXL: {(total - reimagine) / 2**20:.1f} MiB"  # issue 17's budget
    assert reimagine <= 10 * 2**20, f"nano Reimagine: {reimagine / 2**20:.1f} MiB"  # issue 18's: at most 10 more


def test_nano_reimagine_keeps_the_objects_and_moves_them():
    """The shipped variations model on held-out scenes (the benchmark's, fewer): what CLIP's
    embedding says stays, where things were does not."""
    from sdxl_edu.nano import reimagine_bench as bench

    pipe = sdxl_edu.load_variation_pipeline()
    assert pipe.source.endswith("nano_reimagine.safetensors")
    scenes = bench.input_scenes(12)
    seen = bench.judge(load_evaluator(), scenes, bench.variations(pipe, scenes, seeds=2))
    assert seen["faithful"]["rate"] >= 0.6 and seen["layout_changed"]["rate"] >= 0.3, seen


def test_latents_have_unit_variance_after_scaling(nano):
    rng = np.random.default_rng(0)
    images = torch.stack([torch.from_numpy(make_scene(rng, BUCKETS[0]).image) for _ in range(64)])
    with torch.no_grad():
        z = nano.vae.encode(images.permute(0, 3, 1, 2).float() / 127.5 - 1).mean * nano.vae.scaling_factor
    assert 0.8 < z.std().item() < 1.25


def test_nano_draws_the_colour_it_is_asked(nano):
    """Every caption of one object, three seeds (45 pictures: one seed's 15 move the rate by 7
    points a picture)."""
    prompts = [f"a {c} {s}" for s in SHAPES for c in COLOURS]
    evaluator, hits = load_evaluator(), []
    for seed in (0, 1, 2):
        read = read_objects(evaluator, nano(prompts, num_inference_steps=20, seed=seed, progress=False).images)
        hits += [any(o.colour == p.split()[1] for o in found) for found, p in zip(read, prompts)]
    assert np.mean(hits) >= 0.9


def test_the_classifier_reads_noisy_latents(nano):
    """On pictures drawn exactly as captioned (not generated, so the truth is known), the
    noise-aware classifier names the (shape, colour) pair at t = 0, and well above chance
    (1 in 15) at t = 400; the guidance labels `wanted` builds mark the same pair."""
    from sdxl_edu.nano.scenes import render_caption

    captions = [f"a {c} {s}" for s in SHAPES for c in COLOURS] * 2
    rng = np.random.default_rng(30_000)
    pixels = torch.stack([torch.from_numpy(render_caption(rng, c).image).permute(2, 0, 1) for c in captions])
    truth = torch.cat([wanted([(c.split()[2], c.split()[1])]) for c in captions]).flatten(1).argmax(-1)
    classifier, generator = load_classifier(), torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = nano.vae.encode(pixels.float() / 127.5 - 1).mean * nano.vae.scaling_factor
        accuracy = {}
        for t in (0, 400):
            x_t = nano.schedule.q_sample(z, t, torch.randn(z.shape, generator=generator))
            named = classifier(x_t, torch.full((len(z),), t)).flatten(1).argmax(-1)
            accuracy[t] = (named == truth).float().mean().item()
    assert accuracy[0] >= 0.9 and accuracy[400] >= 0.5, accuracy


def test_micro_conditioning_reaches_the_unet(nano):
    """Each size and crop number moves the prediction."""
    from sdxl_edu.model.conditioning import micro_conditioning_ids, vector_y

    text = nano.encode_prompt("a red circle", do_classifier_free_guidance=False)
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])

    def out(original, crop, target=(128, 128)):
        with torch.no_grad():
            return nano.unet(x, t, text.context, vector_y(text.pooled, micro_conditioning_ids(original, crop, target)))

    reference = out((128, 128), (0, 0))
    for changed in (out((32, 32), (0, 0)), out((128, 256), (0, 0)), out((128, 128), (0, 64)),
                    out((128, 128), (0, 0), (96, 160))):
        assert (changed - reference).abs().mean() > 1e-3 * reference.abs().mean()


def test_the_evaluator_reads_every_object_of_fresh_scenes():
    """The benchmark and the lessons are only as good as their judge: scenes it never saw."""
    accuracy = reading_accuracy(load_evaluator(), n=100, seed=20_000)
    assert accuracy["every_object"]["rate"] >= 0.9, accuracy


@pytest.mark.xfail(strict=True, reason="known gap of nano SDXL 2 (model card): over 45 pictures the refiner's "
                   "degradation at score 2.5 minus at 6.0 is +0.003 [-0.008, +0.014], no effect separable from noise")
def test_the_refiner_follows_its_aesthetic_score(nano):
    """Told a low score, the refiner degrades the picture; told a high one, it does not: the
    paired difference over 45 pictures (three seeds) has an interval above zero."""
    refiner, evaluator = load_pipeline(REFINER_FILE), load_evaluator()
    prompts = [f"a {c} {s}" for s in SHAPES for c in COLOURS]
    differences = []
    for seed in (3, 4, 5):
        base = nano(prompts, num_inference_steps=20, seed=seed, progress=False).images

        def degradation(score):
            images = refiner(prompts, image=base, strength=0.2, num_inference_steps=20, aesthetic_score=score,
                             seed=seed, progress=False).images
            with torch.no_grad():
                return evaluator(to_tensor(images))["degradation"]

        differences.append(degradation(2.5) - degradation(6.0))
    d = torch.cat(differences)
    assert d.mean() - 1.96 * d.std() / len(d) ** 0.5 > 0, f"{d.mean():+.4f}"
