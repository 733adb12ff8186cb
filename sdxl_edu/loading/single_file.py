"""The released single-file layout: which model a file holds, its shapes, and back.

`sd_xl_base_1.0.safetensors` holds every part under the prefixes of Stability's sgm code:
the UNet under `model.diffusion_model.`, the autoencoder under `first_stage_model.`, CLIP-L
under `conditioner.embedders.0.transformer.` (transformers' names) and bigG under
`conditioner.embedders.{1,0}.model.` (OpenCLIP's names; the refiner has bigG alone, as
embedder 0). Our UNet and VAE use the file's own names, so no key map is needed for them.

Stable unCLIP (SD 2.1 unCLIP, and nano Reimagine) keeps Stable Diffusion 2's layout: one
OpenCLIP text tower under `cond_stage_model.model.`, CLIP's image tower under
`embedder.model.visual.` (OpenCLIP's names), and a UNet whose `label_emb` reads the image
embedding and its noise level (`sdxl_edu.model.unclip`). The embedding statistics its noise
augmentation scales by are not in the released files (they are buffers the code loads from
a separate file); nano stores them as `noise_augmentor.data_mean` and `.data_std`.

The architecture is *read from the tensors' shapes*, block by block, into the same
dataclasses the model is built from (`sdxl_edu.config`), so the released weights, the
distilled SDXL models (SSD-1B, Segmind Vega, KOALA) and small SDXL-shaped ones load the
same way. Shapes cannot tell the head width, GroupNorm groups or the latent scale; for
those SDXL's values are assumed unless the file's `__metadata__["sdxl_edu"]` (JSON) says
otherwise, which is how nano SDXL records its own.
"""

import json
import os
from pathlib import Path
from typing import Callable

import torch

from ..config import UNetConfig, VAEConfig
from ..model.conditioning import Conditioner
from ..model.unclip import CLIPEmbeddingNoiseAugmentation
from ..model.unet import UNet
from ..model.vae import AutoencoderKL
from .build import build, build_image_encoder, build_text_encoder, metadata_overrides
from .checkpoint import CheckpointError, SafetensorsFile
from .hub import find_tokenizers
from .openclip import (openclip_to_transformers, openclip_visual_to_transformers, transformers_to_openclip,
                       transformers_to_openclip_visual)

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."  # base only
BIGG = {"base": "conditioner.embedders.1.model.", "refiner": "conditioner.embedders.0.model.",
        "unclip": "cond_stage_model.model."}  # the OpenCLIP text tower: bigG in SDXL, ViT-H in SD 2.x
IMAGE_TOWER, NOISE_AUGMENTOR = "embedder.model.visual.", "noise_augmentor."  # unCLIP only
SD2_LATENT_SCALE = 0.18215  # Stable Diffusion 1.x and 2.x's autoencoder scale (SDXL's: 0.13025)
UNCLIP_SCHEDULER = {"prediction_type": "v_prediction"}  # SD 2.1 unCLIP predicts v, on SD's scaled-linear betas


def detect_family(keys: set[str]) -> str:
    """'base' or 'refiner' for SDXL single files, 'unclip' for Stable unCLIP's; a
    CheckpointError naming what the file is for anything else.

    >>> detect_family({UNET + "label_emb.0.0.weight", BIGG["refiner"] + "ln_final.weight"})
    'refiner'
    >>> detect_family({UNET + "label_emb.0.0.weight", BIGG["unclip"] + "ln_final.weight", IMAGE_TOWER + "proj"})
    'unclip'
    >>> detect_family({"cond_stage_model.transformer.text_model.final_layer_norm.weight"})
    Traceback (most recent call last):
    ...
    sdxl_edu.loading.checkpoint.CheckpointError: This is a Stable Diffusion 1.x checkpoint ...
    """
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    sdxl_text = "base" if has(BIGG["base"]) and has(CLIP_L) else "refiner" if has(BIGG["refiner"]) else None
    if sdxl_text and has(UNET + "label_emb."):
        return sdxl_text
    if sdxl_text and has(UNET):
        raise CheckpointError(f"This is an SDXL {sdxl_text} checkpoint whose UNet has no label_emb.* tensors "
                              "(the MLP that adds the vector y, pooled text and sizes, to the timestep embedding). "
                              "The file is damaged or incomplete: download it again.")
    if has(BIGG["unclip"]) and has(IMAGE_TOWER) and has(UNET + "label_emb."):
        return "unclip"
    if has("cond_stage_model.transformer."):
        what = "a Stable Diffusion 1.x checkpoint (one CLIP ViT-L text encoder, 768-wide context, no size conditioning)"
    elif has("cond_stage_model.model."):
        what = "a Stable Diffusion 2.x checkpoint (one OpenCLIP ViT-H text encoder, 1024-wide context)"
    elif has(UNET + "joint_blocks."):
        what = "a Stable Diffusion 3 checkpoint (an MMDiT, not a UNet)"
    elif has("double_blocks.") or has("model.diffusion_model.double_blocks."):
        what = "a FLUX checkpoint (a transformer, not a UNet)"
    elif has("down_blocks.") or has("encoder.down_blocks.") or has("text_model."):
        what = ("one component of a diffusers folder (a UNet, VAE or text encoder file on its own); "
                "pass the whole folder (the one holding model_index.json) instead")
    elif has(UNET):
        what = "an SDXL-like UNet without its text encoders and VAE"
    else:
        what = f"not a Stable Diffusion checkpoint (first keys: {sorted(keys)[:3]})"
    raise CheckpointError(f"This is {what}. sdxl_edu loads SDXL base and refiner checkpoints "
                          "(sd_xl_base_1.0.safetensors, sd_xl_refiner_1.0.safetensors or a diffusers SDXL folder) "
                          "and Stable unCLIP image-variation files (SD 2.1 unCLIP's layout, nano Reimagine).")


# ----------------------------------------------------------------------------- shapes -> configs

def read_unet_config(shapes: dict[str, tuple], **overrides) -> UNetConfig:
    """Read a UNetConfig from the UNet's tensor shapes (keys without the file prefix).

    The encoder is walked block by block: a block with `0.in_layers` is a ResBlock, one
    with `0.op` the Downsample that ends a level; each block's transformer depth is the
    number of `transformer_blocks.N` it holds. The decoder has one block more per level, and
    the middle has three blocks, one, or none. This is how ComfyUI tells SSD-1B, Vega and
    KOALA from SDXL, and how the released SDXL reads back as itself:

    >>> from sdxl_edu.config import SDXL_REFINER
    >>> with torch.device("meta"):
    ...     shapes = {k: tuple(v.shape) for k, v in UNet(SDXL_REFINER).state_dict().items()}
    >>> read_unet_config(shapes) == SDXL_REFINER
    True
    """
    C, in_channels = shapes["input_blocks.0.0.weight"][:2]
    widths, blocks_per_level, encoder, block = [], [], [], 1
    while f"input_blocks.{block}.0.in_layers.2.weight" in shapes:
        first = block
        while f"input_blocks.{block}.0.in_layers.2.weight" in shapes:
            encoder.append(_count(shapes, f"input_blocks.{block}.1.transformer_blocks."))
            block += 1
        widths.append(shapes[f"input_blocks.{first}.0.out_layers.3.weight"][0])
        blocks_per_level.append(block - first)
        block += 1  # the Downsample, if any
    decoder = [_count(shapes, f"output_blocks.{i}.1.transformer_blocks.")
               for i in range(sum(blocks_per_level) + len(widths))]
    middle = {1: 0, 3: _count(shapes, "middle_block.1.transformer_blocks.")}.get(_count(shapes, "middle_block."))
    to_k = next((v for k, v in shapes.items() if k.endswith("attn2.to_k.weight")), (0, 0))
    config = dict(channels=tuple(widths), context_dim=to_k[1], transformer_depth_middle=middle,
                  adm_in_channels=shapes["label_emb.0.0.weight"][1] if "label_emb.0.0.weight" in shapes else 0,
                  in_channels=in_channels, out_channels=shapes["out.2.weight"][0])
    return UNetConfig(**config | block_counts(blocks_per_level, encoder, decoder) | overrides)


def block_counts(blocks_per_level: list[int], encoder: list[int], decoder: list[int]) -> dict:
    """The UNetConfig fields for ResBlocks and transformer depths counted block by block,
    in SDXL's per-level form wherever the blocks of a level agree.

    >>> block_counts([2, 2], [0, 0, 1, 1], [1, 1, 1, 0, 0, 0])
    {'num_res_blocks': 2, 'transformer_depth': (0, 1)}
    >>> block_counts([1, 1], [0, 2], [2, 1, 0, 0])  # KOALA-like: a thinner decoder
    {'num_res_blocks': 1, 'transformer_depth': (0, 2), 'transformer_depth_output': (2, 1, 0, 0)}
    """
    n = blocks_per_level
    fields = dict(num_res_blocks=n[0] if len(set(n)) == 1 else tuple(n))
    levels = UNetConfig(channels=(0,) * len(n), num_res_blocks=fields["num_res_blocks"],
                        transformer_depth=tuple(encoder[sum(n[:i])] for i in range(len(n))))
    fields["transformer_depth"] = levels.transformer_depth
    if sum(levels.encoder_depths(), []) != encoder:
        fields["transformer_depth_input"] = tuple(encoder)
    if sum(levels.decoder_depths(), []) != decoder:
        fields["transformer_depth_output"] = tuple(decoder)
    return fields


def read_vae_config(shapes: dict[str, tuple], **overrides) -> VAEConfig:
    """Read a VAEConfig from the autoencoder's tensor shapes (keys without the prefix).

    >>> from sdxl_edu.config import SDXL_VAE
    >>> with torch.device("meta"):
    ...     shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(SDXL_VAE).state_dict().items()}
    >>> read_vae_config(shapes) == SDXL_VAE
    True
    """
    ch = shapes["encoder.conv_in.weight"][0]
    levels = _count(shapes, "encoder.down.", ".block.0.conv1.weight")
    config = dict(
        ch=ch, ch_mult=tuple(shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in range(levels)),
        num_res_blocks=_count(shapes, "encoder.down.0.block.", ".conv1.weight"),
        z_channels=shapes["post_quant_conv.weight"][0], in_channels=shapes["encoder.conv_in.weight"][1],
        out_ch=shapes["decoder.conv_out.weight"][0])
    return VAEConfig(**{**config, **overrides})


def _count(shapes: dict, prefix: str, suffix: str = "") -> int:
    """How many distinct indices N appear as `prefix + N + ... + suffix`."""
    return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix) and k.endswith(suffix)})


# ----------------------------------------------------------------------------- reading and writing

def load_single_file(path: Path, dtype: torch.dtype, device, tokenizers=None) -> dict:
    """The parts of a pipeline from a file in the released layout (also nano SDXL's)."""
    with SafetensorsFile(str(path)) as f:
        shapes = f.shapes()
        kind = detect_family(set(shapes))
        extra = metadata_overrides(f.metadata)

        def part(prefix: str) -> tuple[dict, Callable]:
            """The shapes under `prefix`, named without it, and a reader of one tensor."""
            def read(key: str) -> torch.Tensor:
                return f.get(prefix + key, dtype).to(device)
            return {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}, read

        unet_shapes, read = part(UNET)
        unet = build(UNet, read_unet_config(unet_shapes, **extra.get("unet", {})), read, unet_shapes, "UNet")
        vae_shapes, read = part(VAE)
        vae_extra = {"scaling_factor": SD2_LATENT_SCALE} if kind == "unclip" else {}
        vae = build(AutoencoderKL, read_vae_config(vae_shapes, **vae_extra | extra.get("vae", {})), read, vae_shapes,
                    "VAE")

        bigg_shapes, read = part(BIGG[kind])
        bigg = openclip_to_transformers({k: read(k) for k in bigg_shapes if not k.startswith("visual.")})
        text_encoder_2 = build_text_encoder(bigg, True, dtype=dtype, device=device,
                                            **{"hidden_act": "gelu", **extra.get("text_encoder_2", {})})
        text_encoder = None
        if kind == "base":
            clip_shapes, read = part(CLIP_L)
            clip_l = {k: read(k) for k in clip_shapes if not k.endswith("position_ids")}
            text_encoder = build_text_encoder(clip_l, False, dtype=dtype, device=device,
                                              **{"hidden_act": "quick_gelu", **extra.get("text_encoder", {})})
        image_parts = _unclip_parts(part, unet, extra, dtype, device) if kind == "unclip" else {}

    tok, tok_2 = find_tokenizers(path, tokenizers, need_first=kind == "base")
    conditioner = Conditioner(tok, text_encoder, tok_2, text_encoder_2, force_zeros_for_empty_prompt=kind == "base",
                              final_layer_norm=kind == "unclip")  # SD 2.x's context: through ln_final
    scheduler = (UNCLIP_SCHEDULER if kind == "unclip" else {}) | extra.get("scheduler", {})
    return dict(unet=unet, vae=vae, conditioner=conditioner, kind=kind, scheduler_config=scheduler,
                default_size=extra.get("default_size", 768 if kind == "unclip" else None)) | image_parts


def _unclip_parts(part: Callable, unet: UNet, extra: dict, dtype: torch.dtype, device) -> dict:
    """The image side of a Stable unCLIP file: CLIP's image tower and the noise
    augmentation of its embedding."""
    tower_shapes, read = part(IMAGE_TOWER)
    tower = openclip_visual_to_transformers({k: read(k) for k in tower_shapes})
    dim, width = tower["visual_projection.weight"].shape
    defaults = {"hidden_act": "quick_gelu" if dim == 768 else "gelu"}  # OpenAI's ViT-L/14 (768), OpenCLIP's ViT-H/14
    if width == 1280:
        defaults["num_attention_heads"] = 16  # ViT-H/14's heads are 80 wide, not 64
    image_encoder = build_image_encoder(tower, dtype=dtype, device=device,
                                        **defaults | extra.get("image_encoder", {}))
    if unet.config.adm_in_channels != 2 * dim:
        raise CheckpointError(f"This unCLIP file's UNet reads a vector y of {unet.config.adm_in_channels} numbers, "
                              f"but its image tower gives {dim}-wide embeddings: y should be the embedding and its "
                              f"noise level's embedding, {2 * dim} numbers. The file is damaged or mixes two models.")
    noise_augmentor = CLIPEmbeddingNoiseAugmentation(dim).to(device)
    stats_shapes, read = part(NOISE_AUGMENTOR)
    if stats_shapes:  # nano's; the released files keep theirs apart (zeros and ones for ViT-H)
        noise_augmentor.load_state_dict({k: read(k).float() for k in stats_shapes})
    return dict(image_encoder=image_encoder, noise_augmentor=noise_augmentor)


def single_file_state_dict(unet: UNet, vae: AutoencoderKL, text_encoder_2, text_encoder=None, image_encoder=None,
                           noise_augmentor: CLIPEmbeddingNoiseAugmentation | None = None) -> dict:
    """All tensors under the released single file's names: SDXL base if `text_encoder` is
    given, Stable unCLIP if `image_encoder` is, the refiner otherwise. The inverse of
    `load_single_file`."""
    kind = "base" if text_encoder is not None else "unclip" if image_encoder is not None else "refiner"
    sd = {UNET + k: v for k, v in unet.state_dict().items()}
    sd |= {VAE + k: v for k, v in vae.state_dict().items()}
    sd |= {BIGG[kind] + k: v for k, v in transformers_to_openclip(text_encoder_2.state_dict()).items()}
    if text_encoder is not None:
        clip_l = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
        sd |= {CLIP_L + "text_model." + k: v for k, v in clip_l.items()}
    if image_encoder is not None:
        sd |= {IMAGE_TOWER + k: v for k, v in transformers_to_openclip_visual(image_encoder.state_dict()).items()}
    if noise_augmentor is not None:
        sd |= {NOISE_AUGMENTOR + k: v for k, v in noise_augmentor.state_dict().items()}
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_single_file(path: str | os.PathLike, unet: UNet, vae: AutoencoderKL, text_encoder_2,
                     text_encoder=None, extra: dict | None = None, image_encoder=None,
                     noise_augmentor: CLIPEmbeddingNoiseAugmentation | None = None) -> None:
    """Save a pipeline's parts as one `.safetensors` file in the released layout (SDXL's, or
    Stable unCLIP's when an image encoder is given).

    What shapes cannot tell (head width, GroupNorm groups, latent scale, the text
    encoders' head counts and activations) goes into `__metadata__["sdxl_edu"]`, so
    `load_pipeline` rebuilds exactly this model.

    >>> import os, tempfile
    >>> from sdxl_edu.testing import toy_parts
    >>> p = toy_parts("base")
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.safetensors")
    >>> save_single_file(path, p["unet"], p["vae"], p["text_encoder_2"], p["text_encoder"])
    >>> with SafetensorsFile(path) as f:
    ...     sorted({k.split(".")[0] + "." + k.split(".")[1] for k in f.keys()})
    ['conditioner.embedders', 'first_stage_model.decoder', 'first_stage_model.encoder', 'first_stage_model.post_quant_conv', 'first_stage_model.quant_conv', 'model.diffusion_model']
    """
    import safetensors.torch

    meta = {"unet": {"num_head_channels": unet.config.num_head_channels, "norm_groups": unet.config.norm_groups},
            "vae": {"scaling_factor": vae.config.scaling_factor, "norm_groups": vae.config.norm_groups}}
    for name, encoder in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2),
                          ("image_encoder", image_encoder)):
        if encoder is not None:
            meta[name] = {"num_attention_heads": encoder.config.num_attention_heads,
                          "hidden_act": encoder.config.hidden_act}
    meta |= extra or {}
    sd = single_file_state_dict(unet, vae, text_encoder_2, text_encoder, image_encoder, noise_augmentor)
    safetensors.torch.save_file(sd, str(path), metadata={"sdxl_edu": json.dumps(meta)})
