"""encode_prompt gives what diffusers' SDXL pipelines give, from the same encoders."""

import pytest
import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from tiny import TINY, parts

from sdxl_edu.model.conditioning import Conditioner

TOL = 1e-4


def pipelines(kind: str):
    p = parts(kind)
    ours = Conditioner(p["tokenizer"], p["text_encoder"], p["tokenizer_2"], p["text_encoder_2"],
                       force_zeros_for_empty_prompt=kind == "base")
    common = dict(vae=AutoencoderKL(**TINY["tiny_vae_diffusers"]), text_encoder=p["text_encoder"],
                  text_encoder_2=p["text_encoder_2"], tokenizer=p["tokenizer"], tokenizer_2=p["tokenizer_2"],
                  unet=UNet2DConditionModel(**TINY[f"tiny_diffusers_{kind}_like"]),
                  scheduler=EulerDiscreteScheduler(), add_watermarker=False)
    if kind == "base":
        theirs = StableDiffusionXLPipeline(**common, force_zeros_for_empty_prompt=True)
    else:
        theirs = StableDiffusionXLImg2ImgPipeline(**common, requires_aesthetics_score=True,
                                                  force_zeros_for_empty_prompt=False)
    return ours, theirs


def assert_same(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert (a - b).abs().max() < TOL


@pytest.mark.parametrize("negative", [None, "", "a blue square", ["blurry", "a small red circle"]])
@torch.no_grad()
def test_base_encode_prompt_matches_diffusers(negative):
    ours, theirs = pipelines("base")
    prompts = ["a red circle on the left", "a photo of a cat"]
    mine = ours.encode_prompt(prompts, negative_prompt=negative)
    assert mine.context.shape == (2, 77, 48) and mine.pooled.shape == (2, 32)
    assert_same(mine, theirs.encode_prompt(prompts, device="cpu", negative_prompt=negative))
    if negative is None:  # diffusers' force_zeros_for_empty_prompt: the official zeros
        assert mine.negative_context.abs().max() == 0 and mine.negative_pooled.abs().max() == 0


@torch.no_grad()
def test_refiner_encode_prompt_matches_diffusers():
    ours, theirs = pipelines("refiner")
    for negative in (None, "blurry"):
        mine = ours.encode_prompt("a green triangle", negative_prompt=negative)
        assert mine.context.shape == (1, 77, 40)  # bigG alone
        assert mine.negative_context.abs().max() > 0  # the refiner encodes "" rather than zeros
        assert_same(mine, theirs.encode_prompt("a green triangle", device="cpu", negative_prompt=negative))


@torch.no_grad()
def test_clip_skip_reads_an_earlier_layer_on_both_branches():
    ours, theirs = pipelines("base")
    mine = ours.encode_prompt("a red circle", negative_prompt="a blue square", clip_skip=1)
    reference = theirs.encode_prompt("a red circle", device="cpu", negative_prompt="a blue square", clip_skip=1)
    assert (mine.context - reference[0]).abs().max() < TOL  # the prompt: as diffusers
    assert (mine.pooled - reference[2]).abs().max() < TOL  # pooled never skips layers
    # The negative branch: diffusers ignores clip_skip there; we apply it alike.
    skipped, _ = ours.encode_text(["a blue square"], clip_skip=1)
    assert (mine.negative_context - skipped).abs().max() < TOL
    assert (mine.negative_context - reference[1]).abs().max() > 1e-2
    default = ours.encode_prompt("a red circle", negative_prompt="a blue square")
    assert (default.context - mine.context).abs().max() > 1e-2


@torch.no_grad()
def test_the_three_unconditional_branches_differ():
    ours, _ = pipelines("base")
    zeros = ours.encode_prompt("a cat", negative_prompt="blurry", force_zeros=True)  # official sgm
    empty = ours.encode_prompt("a cat", negative_prompt="")
    negative = ours.encode_prompt("a cat", negative_prompt="blurry")
    assert zeros.negative_context.abs().max() == 0
    assert (empty.negative_context - negative.negative_context).abs().max() > 1e-2
    assert ours.encode_prompt("a cat", do_classifier_free_guidance=False).negative_context is None
    with pytest.raises(ValueError, match="negative_prompt has 1 entries but prompt has 2"):
        ours.encode_prompt(["a cat", "a circle"], negative_prompt=["blurry"])
