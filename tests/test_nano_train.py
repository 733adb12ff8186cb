"""nano SDXL's training recipe as one command: every stage runs, resumes, and exports files
that the released-SDXL loader (and transformers, for the image tower) reads. (`--quick`: 300 pictures a bucket, 3 steps a stage.)"""

import json
import subprocess
import sys

import pytest
import numpy as np
import safetensors.torch
import torch
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from sdxl_edu import load_pipeline, load_variation_pipeline
from sdxl_edu.nano import NANO_BASE, NANO_REFINER, NANO_SCHEDULER, REFINER_FILE, SDXL_SCHEDULE
from sdxl_edu.nano.reimagine import NANO_REIMAGINE
from sdxl_edu.nano.clip import clip_pixels
from sdxl_edu.nano.classifiers import SceneClassifier, SceneEvaluator
from sdxl_edu.nano.train import STAGES
from sdxl_edu.sampling.schedule import NoiseSchedule

pytestmark = pytest.mark.slow  # runs the trainer


def train(*args):
    subprocess.run([sys.executable, "-m", "sdxl_edu.nano.train", "--quick", *args], check=True, capture_output=True)


def test_quick_recipe_runs_every_stage_resumes_and_exports_loadable_weights(tmp_path):
    run, weights = tmp_path / "run", tmp_path / "weights"
    train("--out", str(run), "--weights", str(weights))
    assert all((run / f"{stage}.done").exists() for stage in STAGES)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    trained = {entry["stage"] for entry in log if entry.get("step") == 3}
    assert trained >= {"vae", "vae_pictures", "clip", "base", "refiner", "reimagine", "classifier", "evaluator"}, trained

    # a second call finds every stage done; more steps for one stage resume from its checkpoint
    train("--out", str(run), "--weights", str(weights), "--stages", "base", "--steps", "base=5")
    new = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()][len(log):]
    assert [(e["stage"], e["step"]) for e in new if "step" in e] == [("base", 5)], new

    base = load_pipeline(weights / "nano_sdxl_base.safetensors")
    refiner = load_pipeline(weights / "nano_sdxl_refiner.safetensors")
    assert (base.kind, base.unet_config, refiner.kind, refiner.unet_config) == ("base", NANO_BASE, "refiner", NANO_REFINER)
    # each file samples with the schedule its UNet was trained on: the base's zero terminal SNR, the refiner's SDXL's
    assert base.schedule == NoiseSchedule.from_config(NANO_SCHEDULER) and base.schedule.prediction_type == "v_prediction"
    assert refiner.schedule == NoiseSchedule.from_config(SDXL_SCHEDULE) and refiner.schedule.prediction_type == "epsilon"
    image = base("a red circle", num_inference_steps=2, seed=0, progress=False).images[0]
    assert image.size == (128, 128)
    # the image tower as transformers reads it, its processor preparing pictures as the clip stage did
    tower = CLIPVisionModelWithProjection.from_pretrained(weights / "image_encoder")
    pixels = CLIPImageProcessor.from_pretrained(weights / "feature_extractor")(images=[image], return_tensors="pt")
    ours = clip_pixels(np.asarray(image)[None])
    assert pixels.pixel_values.shape == ours.shape and (pixels.pixel_values - ours).abs().max() < 1e-5
    assert tower(pixel_values=ours).image_embeds.shape == (1, tower.config.projection_dim)
    # nano Reimagine in Stable unCLIP's layout, its embedding statistics those of the training pictures
    variations = load_variation_pipeline(weights / "nano_reimagine.safetensors")
    assert variations.unet_config == NANO_REIMAGINE and variations.schedule.prediction_type == "v_prediction"
    assert variations.noise_augmentor.data_std.min() > 0 and variations.noise_augmentor.data_mean.abs().max() > 0
    out = variations(image, noise_level=100, num_inference_steps=2, seed=0, progress=False)
    assert out.images[0].size == (128, 128)
    for name, model in (("nano_classifier", SceneClassifier()), ("nano_evaluator", SceneEvaluator())):
        state = safetensors.torch.load_file(weights / f"{name}.safetensors")
        model.load_state_dict({k: v.float() for k, v in state.items()})  # strict: every key, every shape
        assert all(torch.isfinite(v).all() for v in state.values())


def test_a_stage_not_asked_for_is_not_marked_done(tmp_path):
    train("--out", str(tmp_path), "--stages", "data")
    assert sorted(p.name for p in tmp_path.glob("*.done")) == ["data.done"]


def test_continue_from_shipped_starts_each_unet_from_its_shipped_weights(tmp_path):
    train("--out", str(tmp_path), "--continue-from-shipped", "--stages", "data,latents,base,refiner,reimagine")
    shipped = {"base": load_pipeline(None).unet, "refiner": load_pipeline(REFINER_FILE).unet,
               "reimagine": load_variation_pipeline(None).unet}
    for name, unet in shipped.items():
        (ema,) = torch.load(tmp_path / f"{name}.ckpt", weights_only=False)["emas"].values()  # our own file
        # three warm-up steps move a weight by about 1e-5; a UNet started afresh differs by tenths
        drift = max((ema[k] - v.float()).abs().max().item() for k, v in unet.state_dict().items())
        assert drift < 1e-3, (name, drift)
