"""Where SDXL's parameters live: counts per component, per level, in transformer blocks.

Counted on the meta device: no weights are needed, so the numbers for the released models
come from their configs alone.

>>> from sdxl_edu.config import SDXL_BASE
>>> counts = unet_parameters(SDXL_BASE)
>>> counts["total"]
2567463684
>>> round(counts["spatial transformers"] / counts["total"], 2)  # most of SDXL's UNet is attention
0.86
"""

import torch

from .config import UNetConfig, VAEConfig
from .unet import SpatialTransformer, UNet
from .vae import AutoencoderKL


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet_parameters(config: UNetConfig) -> dict[str, int]:
    """Parameters of the whole UNet, of all SpatialTransformers (the attention layers with
    their projections), of each level (encoder and decoder blocks together) and the middle."""
    with torch.device("meta"):
        unet = UNet(config)
    counts = {"total": _count(unet),
              "spatial transformers": sum(_count(m) for m in unet.modules() if isinstance(m, SpatialTransformer))}
    level_of_input, level = [0], 0
    for block in unet.input_blocks[1:]:
        level_of_input.append(level)
        if type(block[0]).__name__ == "Downsample":
            level += 1
    for level in range(config.num_levels):
        down = [b for i, b in enumerate(unet.input_blocks) if i and level_of_input[i] == level]
        up = unet.output_blocks[(config.num_levels - 1 - level) * (config.num_res_blocks + 1):][:config.num_res_blocks + 1]
        counts[f"level {level}"] = sum(_count(b) for b in down + list(up))
    counts["middle"] = _count(unet.middle_block)
    return counts


def vae_parameters(config: VAEConfig) -> int:
    """Parameters of an autoencoder.

    >>> from sdxl_edu.config import SDXL_VAE
    >>> vae_parameters(SDXL_VAE)  # the shape of SD 1.x's VAE, retrained for SDXL
    83653863
    """
    with torch.device("meta"):
        return _count(AutoencoderKL(config))
