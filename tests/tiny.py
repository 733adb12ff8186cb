"""Test helpers: the toy SDXL (sdxl_edu.testing), the released manifests, diffusers copies."""

import json
from pathlib import Path

import torch

from sdxl_edu.testing import TOY_BASE as TINY_BASE  # noqa: F401  (the names the tests use)
from sdxl_edu.testing import TOY_REFINER as TINY_REFINER  # noqa: F401
from sdxl_edu.testing import TOY_VAE as TINY_VAE  # noqa: F401
from sdxl_edu.testing import WORDS, bigg, clip_l, randomize, save_toy_checkpoint, tokenizers, toy_parts  # noqa: F401

DATA = Path(__file__).parent / "data"
TINY = json.loads((DATA / "tiny_test_configs.json").read_text())


def manifest(name: str) -> dict[str, tuple]:
    rows = (line.rstrip("\n").split("\t") for line in open(DATA / "manifests" / name) if not line.startswith("#"))
    return {row[0]: tuple(json.loads(row[1])) if row[1].startswith("[") else row[1] for row in rows}


parts = toy_parts


def save(folder: Path, p: dict, name: str = "model.safetensors") -> Path:
    """Save given parts (often edited by the test) as a single-file checkpoint."""
    return save_toy_checkpoint(folder, parts=p, name=name)


def to_diffusers(ours: torch.nn.Module, names: dict, theirs: torch.nn.Module) -> torch.nn.Module:
    """Copy our weights into a diffusers model through a key map (reshaping 1x1 convs)."""
    expected = theirs.state_dict()
    theirs.load_state_dict({names[k]: v.reshape(expected[names[k]].shape) for k, v in ours.state_dict().items()},
                           strict=True)
    return theirs.eval()


def diffusers_unet_config(c) -> dict:
    """A diffusers `UNet2DConditionModel` config for one of our UNetConfigs (what
    `read_diffusers_unet_config` reads back), for building diffusers' twin of a model."""
    attn = [any(d) for d in c.encoder_depths()]
    mid = {None: None, 0: "UNetMidBlock2D"}.get(c.transformer_depth_middle, "UNetMidBlock2DCrossAttn")
    encoder = [[max(d, 1) for d in depths] for depths in c.encoder_depths()]
    if c.transformer_depth_middle and encoder[-1][0] != c.transformer_depth_middle:
        if attn[-1]:
            raise ValueError("diffusers' middle block takes the depth of the last level's first block")
        encoder[-1][0] = c.transformer_depth_middle
    return dict(block_out_channels=list(c.channels), layers_per_block=[c.res_blocks(i) for i in range(c.num_levels)],
                down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
                up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
                transformer_layers_per_block=encoder, mid_block_type=mid,
                reverse_transformer_layers_per_block=[[max(d, 1) for d in depths] for depths in c.decoder_depths()],
                attention_head_dim=[max(w // c.num_head_channels, 1) for w in c.channels],
                cross_attention_dim=c.context_dim, use_linear_projection=True, addition_embed_type="text_time",
                addition_time_embed_dim=256, projection_class_embeddings_input_dim=c.adm_in_channels,
                in_channels=c.in_channels, out_channels=c.out_channels, norm_num_groups=c.norm_groups)


def save_diffusers_folder(folder: Path, p: dict, kind: str = "base", unet=None, unet_config=None) -> Path:
    """Write `parts` as a diffusers pipeline folder (what `save_pretrained` produces); `unet`
    is a diffusers UNet to save instead of a copy of ours (`unet_config`, its config)."""
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import UNet2DConditionModel

    from sdxl_edu.loading.diffusers import diffusers_unet_names, diffusers_vae_names

    if unet is None:
        unet = to_diffusers(p["unet"], diffusers_unet_names(p["unet"].config),
                            UNet2DConditionModel(**(unet_config or TINY[f"tiny_diffusers_{kind}_like"])))
    unet.save_pretrained(folder / "unet")
    to_diffusers(p["vae"], diffusers_vae_names(p["vae"].config),
                 DiffusersVAE(**TINY["tiny_vae_diffusers"])).save_pretrained(folder / "vae")
    for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        if p[name] is not None:
            p[name].save_pretrained(folder / name)
    index = {"_class_name": "StableDiffusionXLPipeline" if kind == "base" else "StableDiffusionXLImg2ImgPipeline",
             "force_zeros_for_empty_prompt": kind == "base",
             "text_encoder": ["transformers", "CLIPTextModel"] if kind == "base" else [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder
