"""Test helpers: the toy SDXL (sdxl_edu.toy), the released manifests, diffusers copies."""

import json
from pathlib import Path

import torch

from sdxl_edu.toy import TOY_BASE as TINY_BASE  # noqa: F401  (the names the tests use)
from sdxl_edu.toy import TOY_REFINER as TINY_REFINER  # noqa: F401
from sdxl_edu.toy import TOY_VAE as TINY_VAE  # noqa: F401
from sdxl_edu.toy import WORDS, bigg, clip_l, randomize, save_toy_checkpoint, tokenizers, toy_parts  # noqa: F401

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


def save_diffusers_folder(folder: Path, p: dict, kind: str = "base") -> Path:
    """Write `parts` as a diffusers pipeline folder (what `save_pretrained` produces)."""
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import UNet2DConditionModel

    from sdxl_edu.loading import diffusers_unet_names, diffusers_vae_names

    to_diffusers(p["unet"], diffusers_unet_names(p["unet"].config),
                 UNet2DConditionModel(**TINY[f"tiny_diffusers_{kind}_like"])).save_pretrained(folder / "unet")
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
