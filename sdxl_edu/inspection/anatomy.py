"""Where SDXL's parameters live: counts per component, per level, in transformer blocks.

Counted on the meta device: no weights are needed, so the numbers for the released models
come from their configs alone.

>>> from sdxl_edu.config import SDXL_BASE
>>> counts = unet_parameters(SDXL_BASE)
>>> counts["total"]
2567463684
>>> round(counts["spatial transformers"] / counts["total"], 2)  # most of SDXL's UNet is attention
0.86
>>> from sdxl_edu.config import SD15_UNET
>>> unet_parameters(SD15_UNET)["total"]  # Stable Diffusion 1.5's UNet, for comparison
859520964
"""

import torch

from ..config import SDXL_CLIP_BIGG, SDXL_CLIP_L, UNetConfig, VAEConfig
from ..model.unet import SpatialTransformer, UNet
from ..model.vae import AutoencoderKL


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _levels(unet: UNet, config: UNetConfig) -> dict[str, list[str]]:
    """Names of the blocks of each level (encoder and decoder together) and of the middle."""
    level_of_input, level = [0], 0
    for block in unet.input_blocks[1:]:
        level_of_input.append(level)
        if type(block[0]).__name__ == "Downsample":
            level += 1
    up_blocks = [config.res_blocks(level) + 1 for level in range(config.num_levels)]
    groups = {}
    for level in range(config.num_levels):
        down = [f"input_blocks.{i}" for i in range(1, len(unet.input_blocks)) if level_of_input[i] == level]
        first = sum(up_blocks[level + 1:])  # the decoder starts at the deepest level
        up = [f"output_blocks.{i}" for i in range(first, first + up_blocks[level])]
        groups[f"level {level}"] = down + up
    groups["middle"] = ["middle_block"] if unet.middle_block is not None else []
    return groups


def describe(config: UNetConfig) -> str:
    """The UNet block by block: each level's width, its blocks and their transformer depths,
    on the way down, in the middle and on the way up. What a distilled model removed shows
    as a smaller number, or none.

    >>> from sdxl_edu.config import SDXL_BASE
    >>> print(describe(SDXL_BASE))
    encoder level 0: 320 channels, 2 blocks, no attention
    encoder level 1: 640 channels, 2 blocks, transformer depths [2, 2]
    encoder level 2: 1280 channels, 2 blocks, transformer depths [10, 10]
    middle: ResBlock, SpatialTransformer (10 blocks), ResBlock
    decoder level 2: 3 blocks, transformer depths [10, 10, 10]
    decoder level 1: 3 blocks, transformer depths [2, 2, 2]
    decoder level 0: 3 blocks, no attention
    """
    def blocks(depths: list[int]) -> str:
        return f"{len(depths)} blocks, " + (f"transformer depths {depths}" if any(depths) else "no attention")

    lines = [f"encoder level {level}: {config.level_channels(level)} channels, {blocks(depths)}"
             for level, depths in enumerate(config.encoder_depths())]
    middle = config.transformer_depth_middle
    lines.append("middle: " + ("none" if middle is None else "ResBlock" if middle == 0 else
                               f"ResBlock, SpatialTransformer ({middle} blocks), ResBlock"))
    lines += [f"decoder level {level}: {blocks(depths)}"
              for level, depths in zip(reversed(range(config.num_levels)), config.decoder_depths())]
    return "\n".join(lines)


def unet_parameters(config: UNetConfig) -> dict[str, int]:
    """Parameters of the whole UNet, of all SpatialTransformers (the attention layers with
    their projections), of each level (encoder and decoder blocks together) and the middle."""
    with torch.device("meta"):
        unet = UNet(config)
    counts = {"total": _count(unet),
              "spatial transformers": sum(_count(m) for m in unet.modules() if isinstance(m, SpatialTransformer))}
    for group, names in _levels(unet, config).items():
        counts[group] = sum(_count(unet.get_submodule(n)) for n in names)
    return counts


def unet_flops(config: UNetConfig, height: int, width: int) -> dict[str, int]:
    """Floating-point operations of one UNet call on (1, 4, height, width) latents, in total,
    in SpatialTransformers, per level and in the middle, and the SpatialTransformers' share of
    each (`"level 1 transformers"`); PyTorch's FlopCounterMode, on meta.

    >>> from sdxl_edu.config import SDXL_BASE
    >>> round(unet_flops(SDXL_BASE, 128, 128)["total"] / 1e12, 2)  # a 1024 x 1024 picture
    6.76
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet(config)
        args = (torch.randn(1, config.in_channels, height, width), torch.tensor([500.0]),
                torch.randn(1, 77, config.context_dim),
                torch.randn(1, config.adm_in_channels) if config.adm_in_channels else None)
        with FlopCounterMode(display=False) as counter:
            unet(*args)
    per_module = {name.removeprefix("UNet."): sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    transformers = [n for n, m in unet.named_modules() if isinstance(m, SpatialTransformer)]
    counts = {"total": counter.get_total_flops(),
              "spatial transformers": sum(per_module.get(n, 0) for n in transformers)}
    for group, names in _levels(unet, config).items():
        counts[group] = sum(per_module.get(n, 0) for n in names)
        counts[f"{group} transformers"] = sum(per_module.get(n, 0) for n in transformers
                                              if any(n.startswith(name + ".") for name in names))
    return counts


def vae_parameters(config: VAEConfig) -> int:
    """Parameters of an autoencoder.

    >>> from sdxl_edu.config import SDXL_VAE
    >>> vae_parameters(SDXL_VAE)  # the shape of SD 1.x's VAE, retrained for SDXL
    83653863
    """
    with torch.device("meta"):
        return _count(AutoencoderKL(config))


def clip_text_parameters(config: dict) -> int:
    """Parameters of one CLIP text encoder given as CLIPTextConfig arguments, with the pooled
    embedding's projection when the config has a `projection_dim`.

    >>> from sdxl_edu.config import SD21_OPENCLIP_H
    >>> clip_text_parameters(SD21_OPENCLIP_H)  # SD 2.x's OpenCLIP ViT-H/14 text tower
    352984064
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection if "projection_dim" in config else CLIPTextModel
    with torch.device("meta"):
        return _count(model(CLIPTextConfig(**config)))


def text_encoder_parameters(clip_l: dict = SDXL_CLIP_L, bigg: dict = SDXL_CLIP_BIGG) -> dict[str, int]:
    """Parameters of the two text encoders (transformers' CLIP text models, built on meta).

    >>> text_encoder_parameters()  # CLIP ViT-L/14 and OpenCLIP ViT-bigG/14, with its projection
    {'CLIP ViT-L': 123060480, 'OpenCLIP ViT-bigG': 694659840}
    """
    return {"CLIP ViT-L": clip_text_parameters(clip_l), "OpenCLIP ViT-bigG": clip_text_parameters(bigg)}
