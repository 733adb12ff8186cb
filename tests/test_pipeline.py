"""The pipeline's own behaviour: reproducibility, guidance identities, inpainting, recording,
attention capture, errors."""

import pytest
import torch
from PIL import Image
from tiny import parts, save

from sdxl_edu import load_pipeline

SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load_pipeline(save(tmp_path_factory.mktemp("base"), parts("base", seed=10)))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    return load_pipeline(save(tmp_path_factory.mktemp("refiner"), parts("refiner", seed=20)))


def run(pipe, prompt="a red circle", **kwargs):
    kwargs = {"num_inference_steps": 4, "seed": 0, "progress": False, **SIZE, **kwargs}
    return pipe(prompt, **kwargs)


def test_a_seed_gives_the_same_bytes(pipe):
    a, b = run(pipe, seed=7), run(pipe, seed=7)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, run(pipe, seed=8).latents)


def test_same_prompt_in_a_batch_gives_different_images(pipe):
    out = run(pipe, ["a cat", "a cat"])
    assert len(out.images) == 2 and (out.latents[0] - out.latents[1]).abs().max() > 0.1
    assert len(run(pipe, "a cat", num_images_per_prompt=3).images) == 3


def test_guidance_scale_one_runs_the_unet_once_per_step(pipe):
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        run(pipe, guidance_scale=1.0)
        assert calls == [1] * 4
        calls.clear()
        run(pipe, guidance_scale=5.0)
        assert calls == [2] * 4  # both branches in one batch
    finally:
        hook.remove()


def test_recorded_steps_and_callback(pipe):
    seen = []
    out = run(pipe, record=True, callback=seen.append)
    assert [s.i for s in out.steps] == [0, 1, 2, 3] and len(seen) == 4
    first = out.steps[0]
    assert first.eps_cond is not None and first.eps_uncond is not None
    assert torch.allclose(first.x0, first.x - first.sigma * first.eps, atol=1e-5)
    assert torch.allclose(first.eps, first.eps_uncond + 5.0 * (first.eps_cond - first.eps_uncond), atol=1e-4)
    assert torch.allclose(first.x_t, first.x / (first.sigma**2 + 1) ** 0.5)


def test_inpainting_keeps_the_known_region(pipe):
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # repaint the right half
    out = run(pipe, image=picture, mask_image=mask, strength=1.0, output_type="latent")
    known = pipe._image_latents(picture, 1, torch.Generator().manual_seed(0))
    assert torch.allclose(out.latents[..., :8], known[..., :8], atol=1e-5)  # kept exactly
    assert (out.latents[..., 8:] - known[..., 8:]).abs().mean() > 0.1  # regenerated


def test_classifier_guidance_raises_the_classifier_log_prob(pipe):
    torch.manual_seed(0)
    weights = torch.randn(3, 4)

    def classifier(x_t, t):  # a linear "classifier" on the mean latent colour
        return x_t.mean((2, 3)) @ weights.T

    labels = torch.tensor([2])
    plain = run(pipe, guidance_scale=1.0, output_type="latent").latents
    guided = run(pipe, guidance_scale=1.0, output_type="latent", classifier=classifier, class_labels=labels,
                 classifier_scale=50.0).latents

    def log_p(x):
        return classifier(x, None).log_softmax(-1)[0, 2]

    assert log_p(guided) > log_p(plain) + 0.1


def test_multi_label_classifier_guidance_raises_every_wanted_class(pipe):
    torch.manual_seed(1)
    weights = torch.randn(6, 4)

    def classifier(x_t, t):  # (B, 2, 3) logits, one per (shape, colour) pair, as nano's scene classifier
        return (x_t.mean((2, 3)) @ weights.T).reshape(-1, 2, 3)

    wanted = torch.zeros(1, 2, 3)
    wanted[0, 0, 1] = wanted[0, 1, 2] = 1.0  # two objects wanted at once
    plain = run(pipe, guidance_scale=1.0, output_type="latent").latents
    guided = run(pipe, guidance_scale=1.0, output_type="latent", classifier=classifier, class_labels=wanted,
                 classifier_scale=50.0).latents

    def log_p(x):  # log p(both present), each through its own sigmoid
        return torch.nn.functional.logsigmoid(classifier(x, None))[0][wanted[0] > 0].sum()

    assert log_p(guided) > log_p(plain) + 0.1


def test_attention_capture(pipe):
    plain = run(pipe, "a red circle on the left", output_type="latent").latents
    with pipe.capture_attention(per_step=True, self_attention=True) as attn:
        captured = run(pipe, "a red circle on the left", output_type="latent").latents
    assert (captured - plain).abs().max() < 1e-5  # probing changes nothing
    heat = attn.cross_attention_map("circle")
    assert heat.shape == (16, 16) and heat.min() >= 0
    layer = attn.cross_layers[0]
    assert attn.layer_maps[layer].shape[2] == 77
    # each step adds one probability distribution over the 77 tokens per pixel and head
    assert torch.allclose(attn.layer_maps[layer].sum(2), torch.full_like(attn.layer_maps[layer].sum(2), 4.0), atol=1e-4)
    assert attn.step_maps.shape == (1, 4, 77, 16, 16)
    assert torch.allclose(attn.step_maps.sum(1), attn.token_maps, atol=1e-4)
    self_map = next(iter(attn.self_attention_maps.values()))
    assert torch.allclose(self_map.sum(-1), torch.full_like(self_map.sum(-1), 4.0), atol=1e-4)
    assert attn.token_positions("circle") == [3]
    with pytest.raises(KeyError, match="'square' is not a word of the prompt"):
        attn.cross_attention_map("square")
    assert all(m.probe is None for m in attn.modules.values())  # probes removed on exit


def test_prompt_embeds_stand_in_for_the_text_encoders(pipe):
    text = pipe.encode_prompt("a red circle")
    assert torch.equal(run(pipe, prompt_embeds=text).latents, run(pipe).latents)
    other = pipe.encode_prompt("a blue square")
    assert not torch.equal(run(pipe, prompt_embeds=text._replace(pooled=other.pooled)).latents, run(pipe).latents)
    with pytest.raises(ValueError, match="holds 1 prompts but 2 were given"):
        run(pipe, ["a", "b"], prompt_embeds=text)
    with pytest.raises(ValueError, match="do_classifier_free_guidance=True"):
        run(pipe, prompt_embeds=pipe.encode_prompt("a red circle", do_classifier_free_guidance=False))


def test_errors(pipe, refiner):
    with pytest.raises(ValueError, match="divisible by 4"):
        run(pipe, height=66)
    with pytest.raises(ValueError, match="the refiner refines an image"):
        run(refiner)
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        run(pipe, sampler="heun")
    with pytest.raises(ValueError, match="inpainting needs the picture to keep"):
        run(pipe, mask_image=Image.new("L", (64, 64)))
    with pytest.raises(ValueError, match="nothing to run"):
        run(pipe, image=Image.new("RGB", (64, 64)), strength=0.1)


PICTURE = Image.new("RGB", (64, 64), (200, 40, 40))
BAD_ARGUMENTS = [  # what a new user tries; each refused, naming the argument, the value and what it may be
    (dict(num_inference_steps=0), ValueError, r"num_inference_steps must be a whole number >= 1; got 0"),
    (dict(num_inference_steps=2.5), TypeError, r"num_inference_steps must be a whole number >= 1; got 2.5"),
    (dict(image=PICTURE, strength=1.5), ValueError, r"strength must be a number in \[0, 1\] .*; got 1.5"),
    (dict(image=PICTURE, strength=-0.1), ValueError, r"strength must be a number in \[0, 1\] .*; got -0.1"),
    (dict(denoising_end=1.5), ValueError, r"denoising_end must be a number in \(0, 1\) .*; got 1.5"),
    (dict(denoising_end=0), ValueError, r"denoising_end must be a number in \(0, 1\) .*; got 0"),
    (dict(denoising_start=0.5), ValueError, r"denoising_start=0.5 continues a run: pass image="),
    (dict(image=PICTURE, denoising_start=0.9, denoising_end=0.8), ValueError,
     r"denoising_start \(0.9\) must be below denoising_end \(0.8\)"),
    (dict(height=-64), ValueError, r"height must be a whole number >= 1; got -64"),
    (dict(width="64"), TypeError, r"width must be a whole number >= 1 or None; got '64'"),
    (dict(guidance_scale=float("nan")), ValueError, r"guidance_scale must be a finite number; got nan"),
    (dict(guidance_rescale=1.5), ValueError, r"guidance_rescale must be a number in \[0, 1\] .*; got 1.5"),
    (dict(sampler="ddim", eta=2.0), ValueError, r"eta must be a number in \[0, 1\] .*; got 2.0"),
    (dict(eta=0.5), ValueError, r"eta=0.5 is DDIM's, but sampler='euler' fixes its own noise"),
    (dict(use_karras_sigmas=True), ValueError, r"use_karras_sigmas=True is implemented for sampler='dpmpp_2m' only"),
    (dict(num_images_per_prompt=0), ValueError, r"num_images_per_prompt must be a whole number >= 1; got 0"),
    (dict(output_type="png"), ValueError, r"unknown output_type 'png': output_type must be one of"),
    (dict(clip_skip=5), ValueError, r"clip_skip must be a whole number in \[0, 4\] .*; got 5"),
    (dict(original_size=(64,)), TypeError, r"original_size must be a pair \(height, width\) .*; got \(64,\)"),
    (dict(crops_coords_top_left=(-4, 0)), ValueError, r"crops_coords_top_left must be a pair \(top, left\) of "
     r"pixel counts >= 0; got \(-4, 0\)"),
    (dict(class_labels=torch.tensor([1])), ValueError, r"class_labels was given without classifier"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), ValueError, r"latents must have shape \(1, 4, 16, 16\) .*; "
     r"got \(1, 4, 8, 8\)"),
    (dict(prompt=3), TypeError, r"prompt must be a string or a list of strings; got 3 \(int\)"),
    (dict(record="yes"), TypeError, r"record must be True or False; got 'yes' \(str\)"),
    (dict(seed=1.5), TypeError, r"seed must be a whole number or None; got 1.5 \(float\)"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_ARGUMENTS,
                         ids=[" ".join(f"{k}={v!r:.16}" for k, v in kw.items() if k != "image")
                              for kw, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_before_any_work(pipe, kwargs, error, message):
    calls = []
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append(m)) for m in (pipe.unet, pipe.text_encoder_2)]
    try:
        with pytest.raises(error, match=message):
            run(pipe, **kwargs)
        assert calls == []  # neither the text encoders nor the UNet ran
    finally:
        for hook in hooks:
            hook.remove()


def test_bad_arguments_are_refused_by_name(pipe, refiner):
    text = pipe.encode_prompt("a red circle")
    with pytest.raises(ValueError, match="negative_prompt is not used with prompt_embeds"):
        run(pipe, prompt_embeds=text, negative_prompt="blurry")
    with pytest.raises(ValueError, match=r"denoising_start must be a number in \(0, 1\) .*; got 1.0"):
        run(refiner, image=PICTURE, denoising_start=1.0)
    with pytest.raises(TypeError, match=r"pipe\(\) got unexpected arguments \['guidance'\]"):
        pipe.check_arguments(prompt="a cat", guidance=7.0)
    pipe.check_arguments(prompt="a cat", image=PICTURE, strength=1.0, denoising_end=0.8)  # all allowed


def test_latent_preview_recovers_a_linear_colour_code():
    """An autoencoder whose latents are a known linear code of each patch's colour: the
    fitted preview must invert it on pictures it was not fitted on."""
    from types import SimpleNamespace

    from sdxl_edu.inspection.viz import calibration_images, fit_latent_rgb

    code = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4], [0.3, 0.3, 1.2], [-0.5, 0.1, 0.2]])  # (4, 3)

    class LinearVAE(torch.nn.Module):
        scaling_factor, config = 0.5, SimpleNamespace(downsampling_factor=4)

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def encode(self, images):
            rgb = torch.nn.functional.avg_pool2d((images + 1) / 2, 4)
            return SimpleNamespace(mean=torch.einsum("cr,brhw->bchw", code, rgb) + 0.1)

    vae = LinearVAE()
    preview = fit_latent_rgb(vae)
    images = calibration_images(seed=1)
    target = torch.nn.functional.avg_pool2d((images + 1) / 2, 4)
    assert (preview(vae.encode(images).mean * vae.scaling_factor) - target).abs().max() < 1e-4


def test_latent_preview_of_a_pipeline(pipe):
    preview = pipe.latent_preview(torch.zeros(2, 4, 16, 16))
    assert preview.shape == (2, 3, 16, 16) and pipe.latent_preview.matrix.shape == (3, 4)
