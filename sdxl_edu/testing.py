"""A toy SDXL with random weights: the same architecture in miniature, for examples and tests.

It has every part of SDXL (two CLIP encoders with SDXL's pad tokens, a UNet without
attention at the first level, micro-conditioning, a KL autoencoder) at a size that runs in
milliseconds, and it is saved in the released single-file layout, so it loads through the
same code as the real weights. `toy_parts("unclip")` is a Stable unCLIP of the same size
(one OpenCLIP-like text tower, CLIP's image tower, the noise augmentation). Its pictures are noise: it has never been trained (nano
SDXL, `sdxl_edu.nano`, is the trained miniature).

>>> import tempfile
>>> from sdxl_edu import load_pipeline
>>> pipe = load_pipeline(save_toy_checkpoint(tempfile.mkdtemp()))
>>> pipe("a red circle", num_inference_steps=2, progress=False).images[0].size
(64, 64)
"""

import math
from pathlib import Path

import torch
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig,
                          CLIPVisionModelWithProjection)

from .config import UNetConfig, VAEConfig
from .model.unclip import CLIPEmbeddingNoiseAugmentation
from .model.unet import UNet
from .model.vae import AutoencoderKL
from .nano.tokenizers import build_clip_tokenizer

WORDS = ["a", "photo", "of", "red", "green", "blue", "yellow", "purple", "circle", "square", "triangle",
         "small", "large", "on", "the", "left", "right", "top", "bottom", "center", "cat", "blurry"]

TOY_BASE = UNetConfig(channels=(32, 64, 128), num_res_blocks=2, transformer_depth=(0, 1, 2),
                      transformer_depth_middle=2, num_head_channels=16, context_dim=48, adm_in_channels=1568)
TOY_REFINER = UNetConfig(channels=(32, 64, 128, 128), num_res_blocks=2,
                         transformer_depth=(0, 2, 2, 0), transformer_depth_middle=2, num_head_channels=16,
                         context_dim=40, adm_in_channels=1312)
TOY_UNCLIP = UNetConfig(channels=(32, 64, 128), num_res_blocks=2, transformer_depth=(1, 1, 1),
                        transformer_depth_middle=1, num_head_channels=16, context_dim=40, adm_in_channels=48)
TOY_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Draw every parameter, including those SDXL initialises at zero: norms near 1, biases
    small, weights ~ 1/sqrt(fan_in). A wrong wire anywhere then changes the output."""
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


def image_tower(seed: int = 4, image_size: int = 32, projection: int = 24) -> CLIPVisionModelWithProjection:
    """A CLIP image tower (ViT) of 32 x 32 pictures in 8 x 8 patches."""
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=image_size, patch_size=8, projection_dim=projection, hidden_act="gelu")
    return randomize(CLIPVisionModelWithProjection(cfg), seed)


def toy_parts(kind: str = "base", seed: int = 0) -> dict:
    """UNet, VAE, text encoders and tokenizers of a toy SDXL base or refiner, or of a toy
    Stable unCLIP (`kind="unclip"`: with an image tower and the noise augmentation)."""
    tok, tok_2 = tokenizers()
    config = {"base": TOY_BASE, "refiner": TOY_REFINER, "unclip": TOY_UNCLIP}[kind]
    unet = randomize(UNet(config), seed)
    vae = randomize(AutoencoderKL(TOY_VAE), seed + 1)
    if kind == "base":
        return dict(unet=unet, vae=vae, text_encoder=clip_l(len(tok), seed + 2), text_encoder_2=bigg(len(tok), seed + 3),
                    tokenizer=tok, tokenizer_2=tok_2)
    parts = dict(unet=unet, vae=vae, text_encoder=None, text_encoder_2=bigg(len(tok), seed + 3, hidden=40),
                 tokenizer=None, tokenizer_2=tok_2)
    if kind == "unclip":
        augment = CLIPEmbeddingNoiseAugmentation(TOY_UNCLIP.adm_in_channels // 2)
        g = torch.Generator().manual_seed(seed + 5)  # statistics that are not 0 and 1, so scaling is exercised
        augment.data_mean.copy_(0.1 * torch.randn(augment.data_mean.shape, generator=g))
        augment.data_std.copy_(0.5 + torch.rand(augment.data_std.shape, generator=g))
        parts |= dict(image_encoder=image_tower(seed + 4, projection=augment.data_mean.shape[1]),
                      noise_augmentor=augment)
    return parts


def save_toy_checkpoint(folder, kind: str = "base", seed: int = 0, parts: dict | None = None,
                        name: str = "model.safetensors") -> Path:
    """Write a toy SDXL (or the given `parts`) as a single file in the released layout, with
    its tokenizers beside it; return the file's path."""
    from .loading.single_file import save_single_file

    p = parts or toy_parts(kind, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_single_file(folder / name, p["unet"], p["vae"], p["text_encoder_2"], p["text_encoder"],
                     extra={"default_size": 64}, image_encoder=p.get("image_encoder"),
                     noise_augmentor=p.get("noise_augmentor"))
    if p["tokenizer"] is not None:
        p["tokenizer"].save_pretrained(folder / "tokenizer")
    p["tokenizer_2"].save_pretrained(folder / "tokenizer_2")
    return folder / name
