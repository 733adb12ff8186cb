"""Small random SDXL-shaped parts for the tests: same code paths as the real weights.

Every parameter is drawn at random (including the layers SDXL initialises at zero), so
that a wrong wire anywhere changes the output.
"""

import json
import math
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdxl_edu.config import UNetConfig, VAEConfig
from sdxl_edu.text import build_clip_tokenizer
from sdxl_edu.unet import UNet
from sdxl_edu.vae import AutoencoderKL

DATA = Path(__file__).parent / "data"
TINY = json.loads((DATA / "tiny_test_configs.json").read_text())
WORDS = ["a", "photo", "of", "red", "green", "blue", "yellow", "purple", "circle", "square", "triangle",
         "small", "large", "on", "the", "left", "right", "top", "bottom", "center", "cat", "blurry"]

# The sgm-side tiny configs of tiny_test_configs.json, as UNetConfigs.
TINY_BASE = UNetConfig(model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 1, 2),
                       transformer_depth_middle=2, num_head_channels=16, context_dim=48, adm_in_channels=1568)
TINY_REFINER = UNetConfig(model_channels=32, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                          transformer_depth=(0, 2, 2, 0), transformer_depth_middle=2, num_head_channels=16,
                          context_dim=40, adm_in_channels=1312)
TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)


def manifest(name: str) -> dict[str, tuple]:
    rows = (line.rstrip("\n").split("\t") for line in open(DATA / "manifests" / name) if not line.startswith("#"))
    return {row[0]: tuple(json.loads(row[1])) if row[1].startswith("[") else row[1] for row in rows}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Draw every parameter: norms near 1, biases small, weights ~ 1/sqrt(fan_in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and ("norm" in name or "ln" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return module.eval()


def tokenizers():
    """CLIP-L-like (pads with <|endoftext|>) and bigG-like (pads with '!') tokenizers."""
    return build_clip_tokenizer(WORDS), build_clip_tokenizer(WORDS, pad_token="!")


def clip_l(vocab_size: int, seed: int = 1, hidden: int = 16) -> CLIPTextModel:
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=5, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return randomize(CLIPTextModel(cfg), seed)


def bigg(vocab_size: int, seed: int = 2, hidden: int = 32, projection: int = 32) -> CLIPTextModelWithProjection:
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=5, max_position_embeddings=77, hidden_act="gelu",
                         projection_dim=projection, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return randomize(CLIPTextModelWithProjection(cfg), seed)


def parts(kind: str = "base", seed: int = 0) -> dict:
    """UNet, VAE, text encoders and tokenizers of a tiny random SDXL base or refiner."""
    tok, tok_2 = tokenizers()
    if kind == "base":
        return dict(unet=randomize(UNet(TINY_BASE), seed), vae=randomize(AutoencoderKL(TINY_VAE), seed + 1),
                    text_encoder=clip_l(len(tok), seed + 2), text_encoder_2=bigg(len(tok), seed + 3),
                    tokenizer=tok, tokenizer_2=tok_2)
    return dict(unet=randomize(UNet(TINY_REFINER), seed), vae=randomize(AutoencoderKL(TINY_VAE), seed + 1),
                text_encoder=None, text_encoder_2=bigg(len(tok), seed + 3, hidden=40),
                tokenizer=None, tokenizer_2=tok_2)


def save(folder: Path, p: dict, name: str = "model.safetensors") -> Path:
    """Write `parts` as a single file in the released layout, tokenizers beside it."""
    from sdxl_edu.loading import save_single_file

    folder.mkdir(parents=True, exist_ok=True)
    save_single_file(folder / name, p["unet"], p["vae"], p["text_encoder_2"], p["text_encoder"])
    if p["tokenizer"] is not None:
        p["tokenizer"].save_pretrained(folder / "tokenizer")
    p["tokenizer_2"].save_pretrained(folder / "tokenizer_2")
    return folder / name


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
