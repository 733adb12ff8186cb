"""Our modules reproduce the released checkpoints' layout exactly (meta device, no weights)."""

import pytest
import torch
from tiny import manifest
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdxl_edu.config import SDXL_BASE, SDXL_REFINER, SDXL_VAE
from sdxl_edu.loading.diffusers import diffusers_unet_names, diffusers_vae_names
from sdxl_edu.loading.single_file import detect_family, read_unet_config, read_vae_config, single_file_state_dict
from sdxl_edu.model.unet import UNet
from sdxl_edu.model.vae import AutoencoderKL

FILES = {"base": "sd_xl_base_1.0.safetensors.keys.tsv", "refiner": "sd_xl_refiner_1.0.safetensors.keys.tsv"}
IGNORED = ("position_ids", "logit_scale")  # not part of the models: the loader drops them


def released_sized_parts(kind: str):
    """Every model of the release at full size, on the meta device."""
    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                            projection_dim=768, hidden_act="quick_gelu", vocab_size=49408)
    bigg = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                          projection_dim=1280, hidden_act="gelu", vocab_size=49408)
    with torch.device("meta"):
        return (UNet(SDXL_BASE if kind == "base" else SDXL_REFINER), AutoencoderKL(SDXL_VAE),
                CLIPTextModelWithProjection(bigg), CLIPTextModel(clip_l) if kind == "base" else None)


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_single_file_layout_is_the_released_one(kind):
    ours = {k: tuple(v.shape) for k, v in single_file_state_dict(*released_sized_parts(kind)).items()}
    released = {k: v for k, v in manifest(FILES[kind]).items() if not k.endswith(IGNORED)}
    assert set(ours) == set(released)
    assert {k: v for k, v in ours.items() if released[k] != v} == {}


@pytest.mark.parametrize("kind,config", [("base", SDXL_BASE), ("refiner", SDXL_REFINER)])
def test_architecture_read_from_released_shapes(kind, config):
    shapes = manifest(FILES[kind])
    unet = {k.removeprefix("model.diffusion_model."): v for k, v in shapes.items()
            if k.startswith("model.diffusion_model.")}
    vae = {k.removeprefix("first_stage_model."): v for k, v in shapes.items() if k.startswith("first_stage_model.")}
    assert read_unet_config(unet) == config
    assert read_vae_config(vae) == SDXL_VAE
    assert detect_family(set(shapes)) == kind


@pytest.mark.parametrize("config,name", [(SDXL_BASE, "base"), (SDXL_REFINER, "refiner")])
def test_diffusers_unet_names_match_the_released_folder(config, name):
    released_map = {k.removeprefix("model.diffusion_model."): v
                    for k, v in manifest(f"map_unet_{name}_sgm_to_diffusers.tsv").items()}
    names = diffusers_unet_names(config)
    assert names == released_map
    with torch.device("meta"):
        shapes = {names[k]: tuple(v.shape) for k, v in UNet(config).state_dict().items()}
    assert shapes == manifest(f"diffusers_{name}_unet.keys.tsv")


def test_diffusers_vae_names_match_the_released_folder():
    released_map = {k.removeprefix("first_stage_model."): v for k, v in manifest("map_vae_sgm_to_diffusers.tsv").items()}
    names = diffusers_vae_names(SDXL_VAE)
    assert names == released_map
    folder = manifest("diffusers_vae.keys.tsv")
    with torch.device("meta"):
        ours = {names[k]: tuple(v.shape) for k, v in AutoencoderKL(SDXL_VAE).state_dict().items()}
    # the attention projections are Linear [C, C] there, 1x1 convolutions [C, C, 1, 1] here
    assert {k: v[:2] if len(folder[k]) == 2 else v for k, v in ours.items()} == folder


def test_parameter_counts_match_the_release():
    base, refiner = released_sized_parts("base")[0], released_sized_parts("refiner")[0]
    assert sum(p.numel() for p in base.parameters()) == 2_567_463_684
    assert sum(p.numel() for p in refiner.parameters()) == 2_259_526_660


def test_sd15_unet_counts_as_diffusers_builds_it():
    """The same classes give SD 1.5's UNet from its numbers: no vector y, no label_emb."""
    from diffusers import UNet2DConditionModel

    from sdxl_edu.config import SD15_UNET

    with torch.device("meta"):
        ours = UNet(SD15_UNET)
        theirs = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's unet/config.json
        out = ours(torch.randn(1, 4, 8, 8), 500, torch.randn(1, 77, 768))
    assert ours.label_emb is None and out.shape == (1, 4, 8, 8)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) == 859_520_964


def test_sd21_unet_counts_as_diffusers_builds_it():
    """SD 2.1's UNet from its numbers: 64-wide heads, linear projections, context 1024."""
    from diffusers import UNet2DConditionModel

    from sdxl_edu.config import SD21_UNET

    with torch.device("meta"):
        ours = UNet(SD21_UNET)
        theirs = UNet2DConditionModel(cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                                      use_linear_projection=True)  # SD 2.1's unet/config.json
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) == 865_910_724


def test_sdxl_unet_asks_for_y():
    with torch.device("meta"):
        unet = UNet(SDXL_BASE)
        with pytest.raises(ValueError, match="pass y"):
            unet(torch.randn(1, 4, 8, 8), 500, torch.randn(1, 77, 2048))
