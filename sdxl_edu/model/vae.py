"""The KL autoencoder: where latent diffusion's "latent" comes from.

SDXL diffuses in the latent space of an autoencoder rather than on pixels: a 1024x1024x3
image becomes a 128x128x4 latent (48 times fewer numbers), which is what makes a
2.6-billion-parameter UNet affordable (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models"; SDXL paper section 2.4).

- `encode(image)` returns a diagonal Gaussian q(z | x) over latents: the encoder's output
  is split into a mean and a log-variance (the "KL" in KL-f8: training added a small KL
  penalty towards N(0, I)). Take `.mean` for a deterministic latent or `.sample()`.
- `decode(z)` maps a latent back to an image in [-1, 1].
- The UNet does not see z but `z * scaling_factor` (0.13025 for SDXL), chosen so the
  latents have unit variance over the training set, which the noise schedule assumes.
  The pipeline does the scaling; this module works with unscaled latents.

Architecture (sgm `model.py`, with the checkpoint's names): per level `num_res_blocks`
ResnetBlocks and a downsampler (a stride-2 convolution); a middle of ResnetBlock,
single-head self-attention, ResnetBlock; the decoder mirrors it with one more ResnetBlock
per level. `decoder.up.0` is the level nearest the image (the checkpoint lists the
decoder's levels from the image side; diffusers lists them in execution order, so
`up.i` is its `up_blocks.(n-1-i)`).

Known pitfall: in float16 the decoder's activations overflow (values beyond 65504) and
the image comes out black or NaN; decode in float32 or bfloat16 (the "fp16-fix" VAE is
a retrained copy that avoids it).

Upstream, at pinned commits: `Encoder`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/diffusionmodules/model.py#L487),
`Decoder`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/diffusionmodules/model.py#L604).

>>> import torch
>>> from sdxl_edu.config import VAEConfig
>>> vae = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1))
>>> posterior = vae.encode(torch.zeros(1, 3, 64, 64))
>>> posterior.mean.shape                   # f = 4: a 64x64 image has 16x16 latents
torch.Size([1, 4, 16, 16])
>>> vae.decode(posterior.mean).shape
torch.Size([1, 3, 64, 64])
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VAEConfig


def normalize(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """h = conv2(SiLU(GN(conv1(SiLU(GN(x)))))), out = shortcut(x) + h (no time input here)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.norm1 = normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all latent pixels; q, k, v and the output
    projection are 1x1 convolutions in the checkpoint ([C, C, 1, 1])."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = normalize(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (proj(hn).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, h*w, c)
        return x + self.proj_out(out[:, 0].transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution with *asymmetric* zero padding: one row and column on the
    bottom and right only (pad (0, 1, 0, 1)). Symmetric padding=1 gives the same shape
    and different numbers, one of the shape-preserving bugs only a comparison catches."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: ResnetBlocks, then a down- or upsampler."""

    def __init__(self, channels: list[int], groups: int, downsample: bool = False, upsample: bool = False):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(a, b, groups) for a, b in zip(channels, channels[1:]))
        self.attn = nn.ModuleList()  # SDXL has no attention inside the levels
        # an encoder level may end in a Downsample, a decoder level in an Upsample; the
        # identity (no tensors, so no keys in the checkpoint) stands where there is none
        self.downsample = Downsample(channels[-1]) if downsample else nn.Identity()
        self.upsample = Upsample(channels[-1]) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.upsample(self.downsample(x))


class Mid(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> mean and log-variance of the latent (B, 2 z, H/f, W/f)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch = cfg.ch
        for i, width in enumerate(widths):
            self.down.append(Level([ch] + [width] * cfg.num_res_blocks, cfg.norm_groups, downsample=i != last))
            ch = width
        self.mid = Mid(ch, cfg.norm_groups)
        self.norm_out = normalize(ch, cfg.norm_groups)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent (B, z, h, w) -> image (B, 3, f h, f w), roughly in [-1, 1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = Mid(ch, cfg.norm_groups)
        levels = []
        for i in reversed(range(len(widths))):
            levels.insert(0, Level([ch] + [widths[i]] * (cfg.num_res_blocks + 1), cfg.norm_groups, upsample=i != 0))
            ch = widths[i]
        self.up = nn.ModuleList(levels)  # up[0] is the level nearest the image
        self.norm_out = normalize(ch, cfg.norm_groups)
        self.conv_out = nn.Conv2d(ch, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), the encoder's answer for one image.

    >>> q = DiagonalGaussian(torch.zeros(1, 8, 2, 2))  # mean 0, log-variance 0
    >>> q.std.unique(), q.sample(torch.Generator().manual_seed(0)).shape
    (tensor([1.]), torch.Size([1, 4, 2, 2]))
    """

    moments: torch.Tensor

    def __post_init__(self):
        self.mean, logvar = self.moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device="cpu" if generator is None else generator.device).to(self.mean.device)
        return self.mean + self.std * noise


class AutoencoderKL(nn.Module):
    """Encoder and decoder, with the 1x1 `quant_conv` / `post_quant_conv` between them and the
    latent space (a vestige of the VQ models these came from)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.scaling_factor = config.scaling_factor
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    def encode(self, images: torch.Tensor) -> DiagonalGaussian:
        """Images in [-1, 1], (B, 3, H, W) -> q(z | x) over *unscaled* latents."""
        return DiagonalGaussian(self.quant_conv(self.encoder(images)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """*Unscaled* latents (divide the UNet's latents by `scaling_factor` first) -> images."""
        return self.decoder(self.post_quant_conv(z))
