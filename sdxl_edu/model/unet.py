"""The SDXL UNet: predict the noise in a latent, given the timestep, the text and a vector y.

    eps_hat = unet(x_t, t, context, y)

- `x_t` (B, 4, h, w): the noisy latent;
- `t` (B,): the timestep, 0..999, turned into a sinusoidal embedding and an MLP;
- `context` (B, 77, 2048): the text tokens (penultimate layers of CLIP-L and OpenCLIP
  bigG, concatenated), read by every cross-attention layer;
- `y` (B, 2816): the pooled bigG text embedding and the micro-conditioning sizes
  (`sdxl_edu.model.conditioning`), added to the timestep embedding ("adm" in the code, a
  "label embedding" in the original DDPM UNet).

The network is an encoder (`input_blocks`), a middle (`middle_block`) and a decoder
(`output_blocks`) whose every block receives the matching encoder block's output as a
skip connection. A block is a `ResBlock` (convolutions, with the time embedding added in
the middle), optionally a `SpatialTransformer` (self-attention, cross-attention to the
text, feed-forward), optionally a down- or upsampler. Which blocks have attention, and how
deep, is the main thing that tells SDXL from SD 1.x: none at the first level (the one
at 128x128 latents), 2 and 10 transformer blocks below (`sdxl_edu.config`).

The attribute names are the keys of the released single-file checkpoint
(`model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight`), so the
released UNet loads with `load_state_dict(strict=True)` and no key map. The odd indices
(`in_layers.2`, `out_layers.3`, `label_emb.0.0`) are the positions of those layers in the
`nn.Sequential` containers of the original code (sgm `openaimodel.py`), kept for that reason.

Upstream, at pinned commits: `UNetModel`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/diffusionmodules/openaimodel.py#L522),
`ResBlock`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/diffusionmodules/openaimodel.py#L260),
`SpatialTransformer`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/attention.py#L619),
`timestep_embedding`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/diffusionmodules/util.py#L237).

>>> import torch
>>> from sdxl_edu.config import UNetConfig
>>> cfg = UNetConfig(channels=(32, 64), transformer_depth=(0, 1),
...                  transformer_depth_middle=1, num_head_channels=16, context_dim=48,
...                  adm_in_channels=64)
>>> unet = UNet(cfg)
>>> x, context, y = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 48), torch.randn(2, 64)
>>> unet(x, torch.tensor([999, 10]), context, y).shape
torch.Size([2, 4, 16, 16])
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import UNetConfig
from .attention import Attention


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a scalar per batch element, cosines first.

        emb(t)[i]         = cos(t * f_i),  emb(t)[dim/2 + i] = sin(t * f_i),
        f_i = max_period ** (-i / (dim/2)),  i = 0 .. dim/2 - 1

    The same function embeds the timestep (dim = C) and each micro-conditioning number
    (dim = 256: sizes in pixels, crop offsets, the aesthetic score). Computed in float32.

    >>> timestep_embedding(torch.tensor([0.0]), 4)  # cos(0) = 1, sin(0) = 0
    tensor([[1., 1., 0., 0.]])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs.to(t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype, as the original ResBlocks do
    (statistics over many fp16 values lose precision). The weights are cast too: PyTorch
    refuses a float32 input with float16 weights, which is what a model loaded in fp16 has.

    >>> norm = GroupNorm32(2, 4).half()
    >>> norm(torch.randn(1, 4, 3, 3).half()).dtype
    torch.float16
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).type(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that a fresh residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the time embedding added between them, plus a skip.

        h = conv(SiLU(GN(x)));  h = h + Linear(SiLU(emb));  h = conv(SiLU(GN(h)))
        out = skip(x) + h       (skip = 1x1 conv when the channel count changes)
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(0.0),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if channels == out_channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        return self.skip_connection(x) + self.out_layers(h)


class GEGLU(nn.Module):
    """GELU-gated linear unit: one Linear makes both halves, out = a * GELU(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """Linear(dim -> 4 dim, gated) then Linear(4 dim -> dim); `net.1` was a dropout."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention to the text, feed-forward,
    each added back to its input."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)  # self-attention over image tokens
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim=context_dim)  # image -> text
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Treat each latent pixel as a token, run `depth` transformer blocks, add back.

    (B, C, H, W) -> GroupNorm -> (B, H*W, C) -> Linear -> blocks -> Linear -> (B, C, H, W) + x.
    SDXL uses Linear projections here (SD 1.x used 1x1 convolutions), and GroupNorm eps 1e-6.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, heads, dim_head, context_dim) for _ in range(depth))
        self.proj_out = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, H*W, C)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = self.proj_out(tokens)
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution (`op` in the checkpoint)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution (nearest neighbour), then a 3x3 convolution.

    `size` lets the decoder match an encoder feature map of odd size (a 1000 px image has
    125x125 latents, which the encoder downsamples to 63x63 and 32x32).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimestepEmbedSequential(nn.Sequential):
    """A block of the UNet: hands each layer the input it needs."""

    def forward(self, x, emb, context, upsample_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """The SDXL UNet (sgm's `UNetModel` with SDXL's options), built from a `UNetConfig`."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        C, emb_dim, groups = cfg.model_channels, cfg.time_embed_dim, cfg.norm_groups

        def res_block(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, groups)

        def transformer(level: int, depth: int) -> SpatialTransformer:
            ch = cfg.level_channels(level)
            return SpatialTransformer(ch, cfg.num_heads(level), cfg.num_head_channels, depth,
                                      cfg.context_dim, groups)

        self.time_embed = nn.Sequential(nn.Linear(C, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # SDXL's vector conditioning y (pooled text, sizes, crop or aesthetic score) joins the
        # timestep embedding through this MLP; SD 1.x has no y and no label_emb.
        self.label_emb = nn.Sequential(nn.Sequential(
            nn.Linear(cfg.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))) \
            if cfg.adm_in_channels else None

        # Encoder: conv_in, then per level one block per ResBlock, [ResBlock, (SpatialTransformer)], then
        # a Downsample except at the last level. skip_channels records what each block hands the decoder.
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, C, 3, padding=1))])
        skip_channels, ch = [C], C
        for level, depths in enumerate(cfg.encoder_depths()):
            for depth in depths:
                layers = [res_block(ch, cfg.level_channels(level))]
                ch = cfg.level_channels(level)
                if depth:
                    layers.append(transformer(level, depth))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != cfg.num_levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        # The middle: [ResBlock, SpatialTransformer, ResBlock] in SDXL; a single ResBlock or
        # nothing in some distilled variants (KOALA, Vega), which the config says with 0 or None.
        middle = [res_block(ch, ch)]
        if cfg.transformer_depth_middle:
            middle += [transformer(cfg.num_levels - 1, cfg.transformer_depth_middle), res_block(ch, ch)]
        self.middle_block = None if cfg.transformer_depth_middle is None else TimestepEmbedSequential(*middle)

        # Decoder: per level (deepest first) one block more than the encoder, each reading one
        # skip (concatenated on channels), the last one of a level ending in an Upsample.
        self.output_blocks = nn.ModuleList()
        for level, depths in zip(reversed(range(cfg.num_levels)), cfg.decoder_depths()):
            for i, depth in enumerate(depths):
                layers = [res_block(ch + skip_channels.pop(), cfg.level_channels(level))]
                ch = cfg.level_channels(level)
                if depth:
                    layers.append(transformer(level, depth))
                if level and i == len(depths) - 1:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(groups, ch), nn.SiLU(),
                                 zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise eps in x_t. `t` is a number or one per batch element."""
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        t_emb = timestep_embedding(t, self.config.model_channels).to(x.dtype)
        emb = self.time_embed(t_emb)
        if self.label_emb is not None:
            if y is None:
                raise ValueError(f"this UNet is conditioned on a vector y of {self.config.adm_in_channels} numbers "
                                 "(pooled text embedding and micro-conditioning): pass y")
            emb = emb + self.label_emb(y.to(x.dtype))

        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        if self.middle_block is not None:
            h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, context, upsample_size=skips[-1].shape[-2:] if skips else None)
        return self.out(h)
