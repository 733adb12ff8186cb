"""The numbers that make a model SDXL base, SDXL refiner or nano SDXL.

Every architecture in this package is built from one of two plain dataclasses. The
released checkpoints differ only in these numbers, and the loader reads them back from
the tensors' shapes (`sdxl_edu.loading`), so a config is also a description of a file.

Where a number comes from (SDXL paper, arXiv 2307.01952, section 2.1 and table 1; the
released `sd_xl_base.yaml` / `sd_xl_refiner.yaml` of Stability's generative-models):

- base: three levels of 320, 640, 1280 channels; no attention at the first level (it runs
  at 128x128 latents, where attention is expensive), 2 and 10 transformer blocks per
  SpatialTransformer below, 10 in the middle; context 2048 = 768 (CLIP-L) + 1280 (bigG).
- refiner: four levels of 384, 768, 1536, 1536; attention at the middle two levels only,
  4 blocks each; context 1280 (bigG alone).

>>> SDXL_BASE.time_embed_dim, SDXL_BASE.num_levels
(1280, 3)
>>> [SDXL_BASE.level_channels(i) for i in range(3)]
[320, 640, 1280]
>>> SDXL_REFINER.transformer_depth
(0, 4, 4, 0)
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetConfig:
    """Shape of an SDXL-style UNet (the names follow sgm's `UNetModel` arguments).

    SDXL gives every number per level. The distilled SDXL models (SSD-1B, Segmind Vega,
    KOALA) keep SDXL's blocks but drop some of them, so three optional fields describe them
    without changing how SDXL reads: a transformer depth per encoder block
    (`transformer_depth_input`) and per decoder block (`transformer_depth_output`), and a
    middle that is a single ResBlock (`transformer_depth_middle=0`) or absent (`None`).

    >>> cfg = UNetConfig(channels=(32, 64), transformer_depth=(0, 1), transformer_depth_middle=1,
    ...                  num_head_channels=16, context_dim=48, adm_in_channels=64)
    >>> cfg.num_heads(1), cfg.model_channels
    (4, 32)
    >>> cfg.decoder_depths()  # per level, deepest first, one more block than the encoder
    [[1, 1, 1], [0, 0, 0]]
    """

    channels: tuple[int, ...] = (320, 640, 1280)  # width of each level (sgm: model_channels * channel_mult)
    num_res_blocks: int | tuple[int, ...] = 2  # ResBlocks per level on the way down (one more on the way up)
    transformer_depth: tuple[int, ...] = (0, 2, 10)  # blocks per SpatialTransformer, per level; 0 = none
    transformer_depth_middle: int | None = 10  # 0: the middle is one ResBlock; None: there is no middle
    transformer_depth_input: tuple[int, ...] | None = None  # per encoder block, where it differs from the level's
    transformer_depth_output: tuple[int, ...] | None = None  # per decoder block (deepest first), likewise
    num_head_channels: int = 64  # SDXL fixes the head width; the head count follows
    context_dim: int = 2048  # width of the text tokens cross-attention reads
    adm_in_channels: int = 2816  # width of the vector y (pooled text + micro-conditioning); 0: no y (SD 1.x)
    in_channels: int = 4
    out_channels: int = 4
    norm_groups: int = 32  # GroupNorm groups in every ResBlock and SpatialTransformer

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    @property
    def model_channels(self) -> int:
        """C, sgm's name for the first level's width: conv_in's output and the timestep
        embedding's input."""
        return self.channels[0]

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding: 4 C, as in the DDPM UNet."""
        return 4 * self.model_channels

    def level_channels(self, level: int) -> int:
        return self.channels[level]

    def num_heads(self, level: int) -> int:
        return self.level_channels(level) // self.num_head_channels

    def res_blocks(self, level: int) -> int:
        """ResBlocks of a level in the encoder (the decoder has one more)."""
        n = self.num_res_blocks
        return n if isinstance(n, int) else n[level]

    def encoder_depths(self) -> list[list[int]]:
        """Transformer depth of each encoder block, per level: SDXL base gives
        [[0, 0], [2, 2], [10, 10]]."""
        sizes = [self.res_blocks(level) for level in range(self.num_levels)]
        return _per_block(self.transformer_depth_input, self.transformer_depth, sizes)

    def decoder_depths(self) -> list[list[int]]:
        """Transformer depth of each decoder block, per level from the deepest up."""
        levels = list(reversed(range(self.num_levels)))
        return _per_block(self.transformer_depth_output, [self.transformer_depth[i] for i in levels],
                          [self.res_blocks(i) + 1 for i in levels])


def _per_block(per_block: tuple[int, ...] | None, per_level, sizes: list[int]) -> list[list[int]]:
    """Group a flat per-block list by level, or repeat each level's number for its blocks."""
    if per_block is None:
        return [[depth] * n for depth, n in zip(per_level, sizes)]
    if len(per_block) != sum(sizes):
        raise ValueError(f"{len(per_block)} transformer depths given for {sum(sizes)} blocks ({sizes} per level)")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [list(per_block[s:s + n]) for s, n in zip(starts, sizes)]


@dataclass(frozen=True)
class VAEConfig:
    """Shape of the KL autoencoder (sgm's `Encoder`/`Decoder` "ddconfig").

    The image shrinks by 2 at every level but the last: f = 2 ** (len(ch_mult) - 1).

    >>> SDXL_VAE.downsampling_factor
    8
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per encoder level; the decoder has one more
    z_channels: int = 4
    in_channels: int = 3
    out_ch: int = 3
    norm_groups: int = 32
    # Latents are multiplied by this before diffusion so they have unit variance.
    # SDXL's autoencoder was retrained, so the SD 1.x value 0.18215 does not apply.
    scaling_factor: float = 0.13025

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


SDXL_BASE = UNetConfig()

SDXL_REFINER = UNetConfig(
    channels=(384, 768, 1536, 1536),
    transformer_depth=(0, 4, 4, 0),
    transformer_depth_middle=4,
    context_dim=1280,
    adm_in_channels=2560,
)

SDXL_VAE = VAEConfig()

# For comparison, Stable Diffusion 1.x (v1-inference.yaml of CompVis/stable-diffusion): four
# levels of 320/640/1280/1280, one transformer block at each of the first three and in the
# middle, context 768 (CLIP ViT-L alone), no vector conditioning. SD 1.x fixes 8 heads per
# layer rather than SDXL's 64-wide heads; how a width is split into heads does not change
# the parameter count. Its autoencoder has SDXL's architecture (scale 0.18215).
SD15_UNET = UNetConfig(channels=(320, 640, 1280, 1280), transformer_depth=(1, 1, 1, 0), transformer_depth_middle=1,
                       num_head_channels=40, context_dim=768, adm_in_channels=0)

# Stable Diffusion 2.x (v2-inference-v.yaml of Stability-AI/stablediffusion): SD 1.x's levels and
# depths with SDXL's 64-wide heads, linear projections into and out of each SpatialTransformer
# (as many parameters as SD 1.x's 1x1 convolutions) and context 1024 (OpenCLIP ViT-H alone).
SD21_UNET = UNetConfig(channels=(320, 640, 1280, 1280), transformer_depth=(1, 1, 1, 0), transformer_depth_middle=1,
                       num_head_channels=64, context_dim=1024, adm_in_channels=0)


# The two text encoders of SDXL base, as transformers' CLIPTextConfig arguments (the released
# repository's text_encoder/config.json and text_encoder_2/config.json). CLIP ViT-L/14 uses
# quick_gelu (x * sigmoid(1.702 x)), OpenCLIP bigG the exact GELU; bigG has a projection for
# the pooled embedding. Both: 77 positions, the 49,408-token CLIP BPE vocabulary.
SDXL_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                   hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77)
SDXL_CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                      hidden_act="gelu", projection_dim=1280, vocab_size=49408, max_position_embeddings=77)
# SD 2.x's text encoder, OpenCLIP ViT-H/14's text tower (SD 2.x reads no pooled embedding, so
# no projection here).
SD21_OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                       hidden_act="gelu", vocab_size=49408, max_position_embeddings=77)


@dataclass(frozen=True)
class FamilyMember:
    """One text-to-image model of the Stable Diffusion family, as its released config sets it.

    >>> [(m.name, m.resolution, m.prediction_type) for m in SD_FAMILY]
    [('SD 1.5', 512, 'epsilon'), ('SD 2.1', 768, 'v_prediction'), ('SDXL 1.0', 1024, 'epsilon')]
    """

    name: str
    unet: UNetConfig
    text_encoders: tuple[tuple[str, dict], ...]  # (name, CLIPTextConfig arguments), in the context's order
    text_layer: str  # which hidden state the context is read from
    resolution: int  # the side of the pictures it was trained for, in pixels
    prediction_type: str  # what the UNet predicts: the noise ("epsilon") or v
    latent_scale: float  # the autoencoder's scaling factor (the autoencoder's architecture is the same)
    config_url: str  # the released config the numbers come from, at a pinned commit


SD_FAMILY = (
    FamilyMember("SD 1.5", SD15_UNET, (("CLIP ViT-L/14", SDXL_CLIP_L),), "last", 512, "epsilon", 0.18215,
                 "https://github.com/CompVis/stable-diffusion/blob/36de52cb6e05c3bb1b435afcccc29279a4fdf616/"
                 "configs/stable-diffusion/v1-inference.yaml"),
    FamilyMember("SD 2.1", SD21_UNET, (("OpenCLIP ViT-H/14", SD21_OPENCLIP_H),), "penultimate, through ln_final", 768,
                 "v_prediction", 0.18215,
                 "https://github.com/Stability-AI/stablediffusion/blob/cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf/"
                 "configs/stable-diffusion/v2-inference-v.yaml"),
    FamilyMember("SDXL 1.0", SDXL_BASE, (("CLIP ViT-L/14", SDXL_CLIP_L), ("OpenCLIP ViT-bigG/14", SDXL_CLIP_BIGG)),
                 "penultimate", 1024, "epsilon", 0.13025,
                 "https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/"
                 "configs/inference/sd_xl_base.yaml"),
)
