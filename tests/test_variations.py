"""Image variations (Stable unCLIP) against diffusers' StableUnCLIPImg2ImgPipeline: the same
toy random weights, the same seed, the same numbers; and the loader's and pipeline's errors."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, StableUnCLIPImg2ImgPipeline, \
    UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
from PIL import Image
from tiny import DATA, TINY, diffusers_unet_config, parts, save, to_diffusers
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

from sdxl_edu import CheckpointError, ImageVariationPipeline, load_pipeline, load_variation_pipeline
from sdxl_edu.loading.build import match_prefix
from sdxl_edu.loading.diffusers import diffusers_unet_names, diffusers_vae_names
from sdxl_edu.model.unclip import CLIPEmbeddingNoiseAugmentation, clip_image_pixels
from sdxl_edu.testing import TOY_UNCLIP

TOL = 1e-4
RELEASED = json.loads((DATA / "scheduler_config.json").read_text())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Our toy unCLIP loaded from a single file, and diffusers' pipeline on the same weights."""
    p = parts("unclip", seed=30)
    ours = load_pipeline(save(tmp_path_factory.mktemp("unclip"), p))
    unet_names = {k: v.replace("add_embedding.", "class_embedding.")  # unCLIP's y enters as a "class" embedding
                  for k, v in diffusers_unet_names(TOY_UNCLIP).items()}
    unet_config = diffusers_unet_config(TOY_UNCLIP) | dict(
        addition_embed_type=None, class_embed_type="projection")
    vae = to_diffusers(p["vae"], diffusers_vae_names(p["vae"].config),
                       AutoencoderKL(**TINY["tiny_vae_diffusers"] | {"scaling_factor": ours.vae.scaling_factor}))
    augment = p["noise_augmentor"]
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=augment.data_mean.shape[1])
    normalizer.load_state_dict({"mean": augment.data_mean, "std": augment.data_std})
    size = p["image_encoder"].config.image_size
    theirs = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        image_encoder=p["image_encoder"], image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        tokenizer=p["tokenizer_2"], text_encoder=sd2_text_encoder(p["text_encoder_2"]),
        unet=to_diffusers(p["unet"], unet_names, UNet2DConditionModel(**unet_config)),
        scheduler=EulerDiscreteScheduler.from_config(RELEASED | {"prediction_type": "v_prediction"}), vae=vae)
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


def sd2_text_encoder(encoder) -> CLIPTextModel:
    """diffusers' form of SD 2.x's text encoder: the last layer cut off, so that its output,
    through the final LayerNorm, is the penultimate layer's (what we read from the whole one)."""
    config = CLIPTextConfig(**encoder.config.to_dict() | {"num_hidden_layers": encoder.config.num_hidden_layers - 1})
    cut = CLIPTextModel(config)
    last = f"text_model.encoder.layers.{config.num_hidden_layers}."
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith(last) and "projection" not in k}
    cut.load_state_dict(match_prefix(state, cut.state_dict()), strict=True)
    return cut.eval()


def picture(seed=0, size=(40, 56)):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(*size, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.mark.parametrize("level", [0, 250, 999])
def test_noise_augmentation_is_diffusers(models, level):
    _, theirs = models
    augment = CLIPEmbeddingNoiseAugmentation(24)
    augment.load_state_dict({"data_mean": theirs.image_normalizer.mean.detach(),
                             "data_std": theirs.image_normalizer.std.detach()})
    embeds, noise = torch.randn(3, 24), torch.randn(3, 24)
    expected = theirs.noise_image_embeddings(embeds, level, noise=noise)
    assert (augment(embeds, level, noise) - expected).abs().max() < 1e-5


def test_pictures_are_prepared_as_clips_processor(models):
    """The image tower reads what transformers' CLIPImageProcessor (diffusers' feature_extractor) makes."""
    _, theirs = models
    images = [picture(1, (40, 56)), picture(2, (64, 24))]
    expected = theirs.feature_extractor(images=images, return_tensors="pt").pixel_values
    assert (clip_image_pixels(images, 32) - expected).abs().max() < 1e-5


@pytest.mark.slow  # three whole generations beside diffusers' pipeline
@pytest.mark.parametrize("level,scale,n", [(0, 7.0, 1), (300, 10.0, 2), (100, 1.0, 1)])
def test_variations_are_diffusers(models, level, scale, n):
    ours, theirs = models
    image = picture(3)
    common = dict(num_inference_steps=4, guidance_scale=scale, noise_level=level, num_images_per_prompt=n,
                  height=64, width=64)
    out = ours(image, seed=0, output_type="pt", progress=False, **common)
    expected = theirs(image=image, generator=torch.Generator().manual_seed(0), output_type="pt", **common).images
    assert out.images.abs().mean() > 0.05 and out.images.shape == expected.shape
    assert (out.images - expected).abs().max() < TOL
    latents = theirs(image=image, generator=torch.Generator().manual_seed(0), output_type="latent", **common).images
    assert (out.latents - latents).abs().max() < TOL


def test_a_diffusers_unclip_folder_loads_as_the_same_model(models, tmp_path):
    """diffusers' folder (its text encoder without the last layer, y as a class embedding, the
    statistics in image_normalizer) gives the single file's model, number for number."""
    ours, theirs = models
    theirs.save_pretrained(tmp_path / "folder", safe_serialization=True)
    folder = load_variation_pipeline(tmp_path / "folder")
    assert folder.unet_config == ours.unet_config and folder.conditioner.layers_removed == 1
    assert folder.vae.scaling_factor == ours.vae.scaling_factor
    assert folder.schedule.prediction_type == "v_prediction"
    image = picture(8)
    common = dict(noise_level=200, guidance_scale=7.0, num_inference_steps=3, seed=0, progress=False, height=64, width=64)
    context = folder.encode_prompt("a red circle").context
    assert (context - ours.encode_prompt("a red circle").context).abs().max() < 1e-5
    assert (folder.encode_image(image) - ours.encode_image(image)).abs().max() < 1e-5
    assert (folder(image, **common).latents - ours(image, **common).latents).abs().max() < TOL


def test_image_embeds_stand_for_the_picture(models):
    ours, _ = models
    image = picture(4)
    from_picture = ours(image, noise_level=50, num_inference_steps=3, seed=1, progress=False).latents
    from_embeds = ours(image_embeds=ours.encode_image(image), noise_level=50, num_inference_steps=3, seed=1,
                       progress=False).latents
    assert torch.equal(from_picture, from_embeds)


def test_the_picture_steers_the_result(models):
    """Control for the tests above: another picture, same seed, gives other latents."""
    ours, _ = models
    a = ours(picture(5), num_inference_steps=3, seed=2, progress=False).latents
    b = ours(picture(6), num_inference_steps=3, seed=2, progress=False).latents
    assert (a - b).abs().max() > 1e-3


def test_callback_records_and_attention_capture(models):
    ours, _ = models
    seen = []
    out = ours(picture(7), num_inference_steps=3, seed=0, progress=False, callback=seen.append, record=True)
    assert len(seen) == 3 and len(out.steps) == 3
    with ours.capture_attention() as attn:
        ours(picture(7), prompt="a red circle", num_inference_steps=2, seed=0, progress=False)
    assert attn.cross_attention_map("circle").shape == (16, 16)


def test_errors_name_the_problem(models, tmp_path):
    ours, _ = models
    with pytest.raises(ValueError, match="image variations need a picture"):
        ours()
    with pytest.raises(ValueError, match="not both"):
        ours(picture(), image_embeds=torch.zeros(1, 24))
    with pytest.raises(ValueError, match="prepared for CLIP's image tower"):
        ours(torch.zeros(1, 3, 50, 50))
    with pytest.raises(ValueError, match="divisible by 4"):
        ours(picture(), height=66)
    with pytest.raises(CheckpointError, match="SDXL base checkpoint: it draws from a prompt"):
        load_variation_pipeline(save(tmp_path / "base", parts("base")))
    assert isinstance(load_variation_pipeline(ours.source), ImageVariationPipeline)
    base = load_pipeline(save(tmp_path / "base", parts("base")))
    with pytest.raises(TypeError, match="load_variation_pipeline"):
        base(picture())  # a picture where the text model wants a prompt


def test_a_mismatched_image_tower_is_refused(tmp_path):
    p = parts("unclip")
    from sdxl_edu.testing import image_tower
    p["image_encoder"] = image_tower(projection=16)  # 16-wide embeddings for a UNet that reads 2 x 24
    with pytest.raises(CheckpointError, match="noise level's embedding, 32 numbers"):
        load_pipeline(save(tmp_path, p))
