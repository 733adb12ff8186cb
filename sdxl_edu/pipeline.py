"""The pipeline: the loaded parts of SDXL and what a user calls on them.

    prompt -> tokens -> text encoders -> context, pooled  (sdxl_edu.conditioning)
                                   pooled + sizes -> y    (sdxl_edu.conditioning)
    noise -> sampler loop over unet(x_t, t, context, y)   (sdxl_edu.samplers, guidance)
          -> latents / scaling_factor -> vae.decode -> image

`load_pipeline` (sdxl_edu.loading) builds a `Pipeline` from a checkpoint; the attribute
names follow diffusers' (`unet`, `vae`, `text_encoder`, `text_encoder_2`, `tokenizer`,
`tokenizer_2`, `encode_prompt`) so users can move between the two.
"""

import torch

from .conditioning import Conditioner, PromptEmbeddings
from .config import UNetConfig
from .unet import UNet
from .vae import AutoencoderKL


class Pipeline:
    """SDXL base or refiner: UNet, VAE and the text conditioner, on one device and dtype."""

    def __init__(self, unet: UNet, vae: AutoencoderKL, conditioner: Conditioner, kind: str = "base",
                 scheduler_config: dict | None = None, source: str = ""):
        self.unet, self.vae, self.conditioner = unet, vae, conditioner
        self.kind = kind  # "base" or "refiner"
        self.scheduler_config = scheduler_config or {}
        self.source = source

    # diffusers-style names for the parts
    unet_config = property(lambda self: self.unet.config, doc="The UNetConfig read from the checkpoint.")
    text_encoder = property(lambda self: self.conditioner.text_encoder)
    text_encoder_2 = property(lambda self: self.conditioner.text_encoder_2)
    tokenizer = property(lambda self: self.conditioner.tokenizer)
    tokenizer_2 = property(lambda self: self.conditioner.tokenizer_2)
    device = property(lambda self: next(self.unet.parameters()).device)
    dtype = property(lambda self: next(self.unet.parameters()).dtype)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel (8 for SDXL)."""
        return self.vae.config.downsampling_factor

    def encode_prompt(self, prompts: str | list[str], negative_prompt: str | list[str] | None = None,
                      clip_skip: int | None = None, do_classifier_free_guidance: bool = True,
                      force_zeros: bool | None = None) -> PromptEmbeddings:
        """Context and pooled embeddings for the prompt and the unconditional branch.

        See `Conditioner.encode_prompt` for the three unconditional choices.
        """
        return self.conditioner.encode_prompt(prompts, negative_prompt, clip_skip,
                                              do_classifier_free_guidance, force_zeros)

    def check_image_size(self, height: int, width: int) -> None:
        """Images must be a whole number of latent pixels: height and width divisible by 8."""
        f = self.vae_scale_factor
        if height % f or width % f:
            raise ValueError(f"height and width must be divisible by {f} (the VAE maps {f}x{f} pixels to one "
                             f"latent pixel); got {height}x{width}. Try {height // f * f}x{width // f * f}.")

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Pipeline":
        for module in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.unet.parameters())
        return (f"Pipeline(SDXL {self.kind} from {self.source!r}: UNet {params / 1e6:.1f}M parameters, "
                f"{self.dtype}, {self.device})")


def describe(config: UNetConfig) -> str:
    """One line per level: channels and transformer depth.

    >>> from sdxl_edu.config import SDXL_BASE
    >>> print(describe(SDXL_BASE))
    level 0: 320 channels, no attention
    level 1: 640 channels, 2 transformer blocks per attention layer
    level 2: 1280 channels, 10 transformer blocks per attention layer
    middle: 1280 channels, 10 transformer blocks
    """
    lines = []
    for level in range(config.num_levels):
        depth = config.transformer_depth[level]
        what = f"{depth} transformer blocks per attention layer" if depth else "no attention"
        lines.append(f"level {level}: {config.level_channels(level)} channels, {what}")
    lines.append(f"middle: {config.level_channels(config.num_levels - 1)} channels, "
                 f"{config.transformer_depth_middle} transformer blocks")
    return "\n".join(lines)
