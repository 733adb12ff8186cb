"""From a file on disk to a working pipeline: `load_pipeline`.

Three sources, one result:

- a single `.safetensors` file in the released layout (`sd_xl_base_1.0.safetensors`,
  `sd_xl_refiner_1.0.safetensors`, nano SDXL, any SDXL-shaped file): the UNet and VAE load
  with no key map (our attribute names are the file's keys), CLIP-L under transformers'
  names, bigG through `text.openclip_to_transformers`;
- a diffusers folder (`model_index.json`, one sub-folder per component): keys are mapped
  from diffusers' names to ours by `diffusers_unet_names` / `diffusers_vae_names`, two
  short rules derived from the same config the model is built from;
- a hub id (`stabilityai/stable-diffusion-xl-base-1.0`), downloaded as a diffusers folder
  with the `hub` extra.

The architecture is *read from the tensors' shapes* into the same dataclasses the model is
built from (`sdxl_edu.config`), block by block, so the released weights, the distilled SDXL
models (SSD-1B, Segmind Vega, KOALA) and small SDXL-shaped ones load the same way. Shapes cannot tell the head width, GroupNorm groups or the latent scale; for those
SDXL's values are assumed unless the file's `__metadata__["sdxl_edu"]` (JSON) says otherwise,
which is how nano SDXL records its own.

Models are built on the meta device (no memory), every expected key and shape is checked
against the file, and only then are tensors copied in, once each, in the target dtype.
"""

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, SafetensorsFile, refuse_pickle
from .conditioning import Conditioner
from .config import UNetConfig, VAEConfig
from .text import build_text_encoder, load_tokenizer, openclip_to_transformers, transformers_to_openclip
from .unet import UNet
from .vae import AutoencoderKL

__all__ = ["load_pipeline", "CheckpointError", "read_unet_config", "read_vae_config",
           "diffusers_unet_names", "diffusers_vae_names", "detect_family", "save_single_file"]

NANO_DIR = Path(__file__).parent / "nano" / "weights"
SDXL_BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."  # base only
BIGG = {"base": "conditioner.embedders.1.model.", "refiner": "conditioner.embedders.0.model."}


def load_pipeline(source: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", tokenizers=None):
    """Load SDXL (base or refiner) from a single file, a diffusers folder or a hub id.

    >>> import tempfile
    >>> from sdxl_edu.toy import save_toy_checkpoint
    >>> pipe = load_pipeline(save_toy_checkpoint(tempfile.mkdtemp(), "refiner"))
    >>> pipe.kind, pipe.unet_config.context_dim, pipe.text_encoder  # the refiner reads bigG only
    ('refiner', 40, None)

    `source=None` loads the shipped nano SDXL base. `tokenizers` is where to find the
    tokenizer files when a single file has none beside it: a diffusers-style folder with
    `tokenizer/` and `tokenizer_2/`, a hub id, or a (tokenizer, tokenizer_2) pair.
    """
    from .pipeline import Pipeline

    if source is None:
        source = NANO_DIR / "nano_sdxl_base.safetensors"
        if not source.is_file():
            raise FileNotFoundError(f"the nano SDXL weights are not in this installation ({source}); "
                                    "pass the path or hub id of an SDXL checkpoint instead")
    path = Path(source)
    if path.is_dir():
        parts = load_diffusers_folder(path, dtype, device)
    elif path.is_file():
        parts = load_single_file(path, dtype, device, tokenizers)
    elif _looks_like_hub_id(str(source)):
        parts = load_diffusers_folder(Path(download(str(source))), dtype, device)
    else:
        raise FileNotFoundError(f"{source} is neither a file, a folder nor a hub id ('owner/name')")
    return Pipeline(**parts, source=str(source))


# ----------------------------------------------------------------------------- families

def detect_family(keys: set[str]) -> str:
    """'base' or 'refiner' for SDXL single files; a CheckpointError naming what the file
    is for anything else.

    >>> detect_family({UNET + "label_emb.0.0.weight", BIGG["refiner"] + "ln_final.weight"})
    'refiner'
    >>> detect_family({"cond_stage_model.transformer.text_model.final_layer_norm.weight"})
    Traceback (most recent call last):
    ...
    sdxl_edu.checkpoint.CheckpointError: This is a Stable Diffusion 1.x checkpoint ...
    """
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    sdxl_text = "base" if has(BIGG["base"]) and has(CLIP_L) else "refiner" if has(BIGG["refiner"]) else None
    if sdxl_text and has(UNET + "label_emb."):
        return sdxl_text
    if sdxl_text and has(UNET):
        raise CheckpointError(f"This is an SDXL {sdxl_text} checkpoint whose UNet has no label_emb.* tensors "
                              "(the MLP that adds the vector y, pooled text and sizes, to the timestep embedding). "
                              "The file is damaged or incomplete: download it again.")
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
    raise CheckpointError(f"This is {what}. sdxl_edu loads SDXL base and refiner checkpoints only "
                          "(sd_xl_base_1.0.safetensors, sd_xl_refiner_1.0.safetensors or a diffusers SDXL folder).")


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


# ----------------------------------------------------------------------------- building

def build(module_fn, tensors: dict[str, callable], shapes: dict[str, tuple], what: str) -> nn.Module:
    """Build `module_fn()` on the meta device, check every key and shape against the file,
    then fill it with `tensors[key]()` (each a one-copy read in the target dtype)."""
    with torch.device("meta"):
        module = module_fn()
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_keys(expected, shapes, what)
    module.load_state_dict({k: tensors[k]() for k in expected}, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def check_keys(expected: dict[str, tuple], found: dict[str, tuple], what: str) -> None:
    """Name the missing, unexpected and wrongly shaped tensors, if any.

    >>> check_keys({"a": (2,), "b": (3,)}, {"a": (4,), "c": (1,)}, "UNet")
    Traceback (most recent call last):
    ...
    sdxl_edu.checkpoint.CheckpointError: The UNet tensors do not match an SDXL UNet: missing: b; unexpected: c; wrong shape: a: file (4,), model (2,). The file is damaged or is not an SDXL checkpoint.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {found[k]}, model {expected[k]}" for k in expected
             if k in found and tuple(found[k]) != expected[k]]
    if missing or unexpected or wrong:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
                problems.append(f"{label}: {shown}")
        raise CheckpointError(f"The {what} tensors do not match an SDXL {what}: " + "; ".join(problems)
                              + ". The file is damaged or is not an SDXL checkpoint.")


def _metadata_overrides(metadata: dict) -> dict:
    return json.loads(metadata["sdxl_edu"]) if "sdxl_edu" in metadata else {}


# ----------------------------------------------------------------------------- single file

def load_single_file(path: Path, dtype: torch.dtype, device, tokenizers=None) -> dict:
    """The released single-file layout (also nano SDXL's)."""
    with SafetensorsFile(str(path)) as f:
        shapes = f.shapes()
        kind = detect_family(set(shapes))
        extra = _metadata_overrides(f.metadata)

        def part(prefix: str) -> tuple[dict, dict]:
            keys = [k for k in shapes if k.startswith(prefix)]
            return ({k[len(prefix):]: shapes[k] for k in keys},
                    {k[len(prefix):]: (lambda k=k: f.get(k, dtype).to(device)) for k in keys})

        unet_shapes, unet_tensors = part(UNET)
        unet_config = read_unet_config(unet_shapes, **extra.get("unet", {}))
        unet = build(lambda: UNet(unet_config), unet_tensors, unet_shapes, "UNet")

        vae_shapes, vae_tensors = part(VAE)
        vae_config = read_vae_config(vae_shapes, **extra.get("vae", {}))
        vae = build(lambda: AutoencoderKL(vae_config), vae_tensors, vae_shapes, "VAE")

        bigg = openclip_to_transformers({k: t() for k, t in part(BIGG[kind])[1].items()})
        text_encoder_2 = build_text_encoder(bigg, True, dtype=dtype, device=device,
                                            **{"hidden_act": "gelu", **extra.get("text_encoder_2", {})})
        text_encoder = None
        if kind == "base":
            clip_l = {k: t() for k, t in part(CLIP_L)[1].items() if not k.endswith("position_ids")}
            text_encoder = build_text_encoder(clip_l, False, dtype=dtype, device=device,
                                              **{"hidden_act": "quick_gelu", **extra.get("text_encoder", {})})

    tok, tok_2 = find_tokenizers(path, tokenizers, need_first=kind == "base")
    conditioner = Conditioner(tok, text_encoder, tok_2, text_encoder_2,
                              force_zeros_for_empty_prompt=kind == "base")
    return dict(unet=unet, vae=vae, conditioner=conditioner, kind=kind,
                scheduler_config=extra.get("scheduler", {}), default_size=extra.get("default_size"))


def find_tokenizers(path: Path, tokenizers, need_first: bool):
    """Tokenizers from the argument, from beside the file, or from the hub, in that order."""
    if isinstance(tokenizers, (tuple, list)):
        tok, tok_2 = (load_tokenizer(str(t)) if isinstance(t, (str, os.PathLike)) else t for t in tokenizers)
        return tok, tok_2
    candidates = [Path(tokenizers)] if tokenizers is not None and Path(tokenizers).is_dir() else []
    candidates.append(path.parent)
    for folder in candidates:
        if (folder / "tokenizer_2").is_dir() and (not need_first or (folder / "tokenizer").is_dir()):
            return (load_tokenizer(str(folder / "tokenizer")) if need_first else None,
                    load_tokenizer(str(folder / "tokenizer_2")))
    hub_id = tokenizers if isinstance(tokenizers, str) and _looks_like_hub_id(tokenizers) else SDXL_BASE_REPO
    try:
        folder = Path(download(hub_id, allow_patterns=["tokenizer/*", "tokenizer_2/*"]))
        return (load_tokenizer(str(folder / "tokenizer")) if need_first else None,
                load_tokenizer(str(folder / "tokenizer_2")))
    except Exception as e:  # no hub extra, or no network
        raise FileNotFoundError(
            f"No tokenizer files for {path}. SDXL's two tokenizers (vocab.json and merges.txt, a few MB) "
            "ship in the diffusers release, not in the single file. Either pass "
            "tokenizers='path/to/stable-diffusion-xl-base-1.0' (any folder with tokenizer/ and "
            "tokenizer_2/ sub-folders), put those two folders next to the .safetensors file, or "
            f"install the hub extra (pip install 'sdxl-edu[hub]') to download them. ({e})") from None


# ----------------------------------------------------------------------------- writing

def single_file_state_dict(unet: UNet, vae: AutoencoderKL, text_encoder_2, text_encoder=None) -> dict:
    """All tensors under the released single file's names (base if `text_encoder` is
    given, refiner otherwise): the inverse of `load_single_file`."""
    kind = "base" if text_encoder is not None else "refiner"
    sd = {UNET + k: v for k, v in unet.state_dict().items()}
    sd |= {VAE + k: v for k, v in vae.state_dict().items()}
    sd |= {BIGG[kind] + k: v for k, v in transformers_to_openclip(text_encoder_2.state_dict()).items()}
    if text_encoder is not None:
        clip_l = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
        sd |= {CLIP_L + "text_model." + k: v for k, v in clip_l.items()}
    return {k: v.detach().contiguous() for k, v in sd.items()}


def save_single_file(path: str | os.PathLike, unet: UNet, vae: AutoencoderKL, text_encoder_2,
                     text_encoder=None, extra: dict | None = None) -> None:
    """Save a pipeline's parts as one `.safetensors` file in the released layout.

    What shapes cannot tell (head width, GroupNorm groups, latent scale, the text
    encoders' head counts and activations) goes into `__metadata__["sdxl_edu"]`, so
    `load_pipeline` rebuilds exactly this model.

    >>> import os, tempfile
    >>> from sdxl_edu.toy import toy_parts
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
    for name, encoder in (("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2)):
        if encoder is not None:
            meta[name] = {"num_attention_heads": encoder.config.num_attention_heads,
                          "hidden_act": encoder.config.hidden_act}
    meta |= extra or {}
    safetensors.torch.save_file(single_file_state_dict(unet, vae, text_encoder_2, text_encoder), str(path),
                                metadata={"sdxl_edu": json.dumps(meta)})


# ----------------------------------------------------------------------------- diffusers folder

def diffusers_unet_names(config: UNetConfig) -> dict[str, str]:
    """Map each of our (single-file) UNet keys to diffusers' `UNet2DConditionModel` key.

    Block by block: the j-th ResBlock of level L is `down_blocks.L.resnets.j` /
    `.attentions.j`, the block after a level's ResBlocks is its downsampler, the middle is
    `mid_block`, and the decoder's blocks, deepest level first, are `up_blocks.U`; inside a ResBlock
    `in_layers.0/2, emb_layers.1, out_layers.0/3, skip_connection` are
    `norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut`. Everything inside a
    SpatialTransformer already has the same name in both.

    >>> from sdxl_edu.config import SDXL_BASE
    >>> names = diffusers_unet_names(SDXL_BASE)
    >>> names["input_blocks.4.0.emb_layers.1.weight"], names["output_blocks.5.2.conv.weight"]
    ('down_blocks.1.resnets.0.time_emb_proj.weight', 'up_blocks.1.upsamplers.0.conv.weight')
    """
    blocks = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
              "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
              "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out.",
              "middle_block.0.": "mid_block.resnets.0.", "middle_block.1.": "mid_block.attentions.0.",
              "middle_block.2.": "mid_block.resnets.1."}
    i = 1
    for level in range(config.num_levels):
        for j in range(config.res_blocks(level)):
            blocks[f"input_blocks.{i}.0."] = f"down_blocks.{level}.resnets.{j}."
            blocks[f"input_blocks.{i}.1."] = f"down_blocks.{level}.attentions.{j}."
            i += 1
        blocks[f"input_blocks.{i}.0.op."] = f"down_blocks.{level}.downsamplers.0.conv."
        i += 1
    i = 0
    for up in range(config.num_levels):
        for j in range(config.res_blocks(config.num_levels - 1 - up) + 1):
            blocks[f"output_blocks.{i}.0."] = f"up_blocks.{up}.resnets.{j}."
            blocks[f"output_blocks.{i}.1."] = f"up_blocks.{up}.attentions.{j}."
            for k in (1, 2):  # the upsampler follows the attention, if the level has one
                blocks[f"output_blocks.{i}.{k}.conv."] = f"up_blocks.{up}.upsamplers.0.conv."
            i += 1
    resnet = {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "time_emb_proj.",
              "out_layers.0.": "norm2.", "out_layers.3.": "conv2.", "skip_connection.": "conv_shortcut."}
    with torch.device("meta"):
        keys = UNet(config).state_dict().keys()
    return {key: _rename(key, blocks, resnet, {}) for key in keys}


def diffusers_vae_names(config: VAEConfig) -> dict[str, str]:
    """Map each of our VAE keys to diffusers' `AutoencoderKL` key.

    `encoder.down.i.block.j` is `encoder.down_blocks.i.resnets.j`; the decoder's levels are
    listed the other way round (`decoder.up.i` is `decoder.up_blocks.(n-1-i)`); the middle
    attention's `norm, q, k, v, proj_out` are `group_norm, to_q, to_k, to_v, to_out.0`.

    >>> from sdxl_edu.config import SDXL_VAE
    >>> diffusers_vae_names(SDXL_VAE)["decoder.up.0.block.0.nin_shortcut.weight"]
    'decoder.up_blocks.3.resnets.0.conv_shortcut.weight'
    """
    last = len(config.ch_mult) - 1
    blocks = {"encoder.norm_out.": "encoder.conv_norm_out.", "decoder.norm_out.": "decoder.conv_norm_out."}
    for side in ("encoder", "decoder"):
        blocks |= {f"{side}.mid.block_1.": f"{side}.mid_block.resnets.0.",
                   f"{side}.mid.block_2.": f"{side}.mid_block.resnets.1.",
                   f"{side}.mid.attn_1.": f"{side}.mid_block.attentions.0."}
    for i in range(len(config.ch_mult)):
        for j in range(config.num_res_blocks + 1):
            blocks[f"encoder.down.{i}.block.{j}."] = f"encoder.down_blocks.{i}.resnets.{j}."
            blocks[f"decoder.up.{i}.block.{j}."] = f"decoder.up_blocks.{last - i}.resnets.{j}."
        blocks[f"encoder.down.{i}.downsample."] = f"encoder.down_blocks.{i}.downsamplers.0."
        blocks[f"decoder.up.{i}.upsample."] = f"decoder.up_blocks.{last - i}.upsamplers.0."
    resnet = {"nin_shortcut.": "conv_shortcut."}
    attention = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}
    with torch.device("meta"):
        keys = AutoencoderKL(config).state_dict().keys()
    return {key: _rename(key, blocks, resnet, attention) for key in keys}


def _rename(key: str, blocks: dict[str, str], resnet: dict[str, str], attention: dict[str, str]) -> str:
    """Replace the longest matching block prefix, then the layer name inside the block."""
    prefix = max((p for p in blocks if key.startswith(p)), key=len, default=None)
    theirs, rest = blocks.get(prefix, ""), key[len(prefix or ""):]
    inner = resnet if ".resnets." in theirs else attention if ".attentions." in theirs else {}
    for ours_name, their_name in inner.items():
        if rest.startswith(ours_name):
            rest = their_name + rest[len(ours_name):]
            break
    return theirs + rest


def read_diffusers_unet_config(cfg: dict) -> UNetConfig:
    """UNetConfig from a diffusers `unet/config.json` (whose `attention_head_dim` is, for
    historical reasons, the number of heads).

    diffusers gives transformer depths per level or, for the distilled models, per block
    (`transformer_layers_per_block` as lists, `reverse_transformer_layers_per_block` for the
    decoder), and the middle as `mid_block_type`: SDXL's `UNetMidBlock2DCrossAttn` (its
    depth is the last level's), a single ResBlock (`UNetMidBlock2D`) or none (`null`).

    >>> from sdxl_edu.config import SDXL_BASE
    >>> read_diffusers_unet_config({"block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20],
    ...     "transformer_layers_per_block": [1, 2, 10], "layers_per_block": 2, "cross_attention_dim": 2048,
    ...     "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    ...     "projection_class_embeddings_input_dim": 2816, "in_channels": 4, "out_channels": 4}) == SDXL_BASE
    True
    """
    widths = cfg["block_out_channels"]
    levels = range(len(widths))
    per_level = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * len(widths)  # noqa: E731
    blocks, heads = per_level(cfg["layers_per_block"]), per_level(cfg["attention_head_dim"])
    attn = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
    layers = per_level(cfg.get("transformer_layers_per_block", 1))
    encoder = [d if a else 0 for i, a in zip(levels, attn) for d in per_level_block(layers[i], blocks[i])]
    reverse = cfg.get("reverse_transformer_layers_per_block") or [layers[i] for i in reversed(levels)]
    decoder = [d if a else 0 for i, a in zip(reversed(levels), reversed(attn))
               for d in per_level_block(reverse[len(widths) - 1 - i], blocks[i] + 1)]
    middle = {"UNetMidBlock2DCrossAttn": per_level_block(layers[-1], 1)[0], "UNetMidBlock2D": 0, None: None}[
        cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")]
    head_dims = {w // h for w, h, a in zip(widths, heads, attn) if a}
    return UNetConfig(
        channels=tuple(widths), transformer_depth_middle=middle, **block_counts(blocks, encoder, decoder),
        num_head_channels=head_dims.pop() if len(head_dims) == 1 else 64, context_dim=cfg["cross_attention_dim"],
        adm_in_channels=cfg.get("projection_class_embeddings_input_dim") or 0, in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"], norm_groups=cfg.get("norm_num_groups", 32))


def per_level_block(depth: int | list[int], n: int) -> list[int]:
    """A level's depth for each of its n blocks: diffusers gives one number or a list."""
    return list(depth) if isinstance(depth, (list, tuple)) else [depth] * n


def read_diffusers_vae_config(cfg: dict) -> VAEConfig:
    widths = cfg["block_out_channels"]
    return VAEConfig(ch=widths[0], ch_mult=tuple(w // widths[0] for w in widths),
                     num_res_blocks=cfg["layers_per_block"], z_channels=cfg["latent_channels"],
                     in_channels=cfg["in_channels"], out_ch=cfg["out_channels"],
                     norm_groups=cfg.get("norm_num_groups", 32), scaling_factor=cfg.get("scaling_factor", 0.13025))


def load_diffusers_folder(folder: Path, dtype: torch.dtype, device) -> dict:
    """A diffusers SDXL folder: `model_index.json` and one sub-folder per component."""
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"{folder} has no model_index.json: it is not a diffusers pipeline folder. "
                              "Pass a single .safetensors file, or the folder that holds model_index.json.")
    index = json.loads((folder / "model_index.json").read_text())
    kind = "refiner" if not (index.get("text_encoder") or [None])[0] else "base"

    unet_json = json.loads((folder / "unet" / "config.json").read_text())
    unet_config = read_diffusers_unet_config(unet_json)
    unet = _build_from_diffusers(folder / "unet", lambda: UNet(unet_config), diffusers_unet_names(unet_config),
                                 dtype, device, "UNet")
    vae_config = read_diffusers_vae_config(json.loads((folder / "vae" / "config.json").read_text()))
    vae = _build_from_diffusers(folder / "vae", lambda: AutoencoderKL(vae_config), diffusers_vae_names(vae_config),
                                dtype, device, "VAE")

    def encoder(name: str, with_projection: bool):
        if not (folder / name).is_dir():
            return None
        cfg = json.loads((folder / name / "config.json").read_text())
        with SafetensorsFile(str(_weights_file(folder / name, "model", dtype))) as f:
            sd = {k: f.get(k, dtype) for k in f.keys() if not k.endswith("position_ids")}
        settings = {k: cfg[k] for k in ("hidden_act", "num_attention_heads", "layer_norm_eps",
                                        "bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
        return build_text_encoder(sd, with_projection, dtype=dtype, device=device, **settings)

    text_encoder = encoder("text_encoder", False) if kind == "base" else None
    tok = load_tokenizer(str(folder / "tokenizer")) if kind == "base" else None
    conditioner = Conditioner(tok, text_encoder, load_tokenizer(str(folder / "tokenizer_2")),
                              encoder("text_encoder_2", True),
                              force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", kind == "base"))
    scheduler = folder / "scheduler" / "scheduler_config.json"
    return dict(unet=unet, vae=vae, conditioner=conditioner, kind=kind,
                scheduler_config=json.loads(scheduler.read_text()) if scheduler.is_file() else {},
                default_size=unet_json.get("sample_size", 128) * vae_config.downsampling_factor)


def _weights_file(folder: Path, stem: str, dtype: torch.dtype) -> Path:
    """Prefer the fp16 variant when loading in fp16, the full-precision file otherwise."""
    names = [f"{stem}.safetensors", f"{stem}.fp16.safetensors"]
    if dtype == torch.float16:
        names.reverse()
    for name in names:
        if (folder / name).is_file():
            return folder / name
    for pickle in folder.glob(f"{stem}*.bin"):
        refuse_pickle(str(pickle))
    raise CheckpointError(f"no {stem}.safetensors in {folder}")


def _build_from_diffusers(folder: Path, module_fn, names: dict[str, str], dtype, device, what: str) -> nn.Module:
    with SafetensorsFile(str(_weights_file(folder, "diffusion_pytorch_model", dtype))) as f:
        found = f.shapes()
        ours_by_theirs = {theirs: ours for ours, theirs in names.items()}
        shapes = {ours_by_theirs.get(k, k): v for k, v in found.items()}
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in module_fn().state_dict().items()}
        # diffusers stores the VAE's attention projections as Linear [C, C], we as 1x1 convs
        shapes = {k: (expected[k] if k in expected and len(expected[k]) == 4 and tuple(v) == expected[k][:2]
                      else v) for k, v in shapes.items()}
        tensors = {ours: (lambda ours=ours, theirs=theirs: f.get(theirs, dtype).reshape(expected[ours]).to(device))
                   for ours, theirs in names.items()}
        return build(module_fn, tensors, shapes, what)


# ----------------------------------------------------------------------------- hub

def _looks_like_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith((".", "/")) and not os.path.exists(s)


def download(repo_id: str, allow_patterns: list[str] | None = None) -> str:
    """Download an SDXL diffusers repository (safetensors, configs, tokenizers only) and
    return its local folder. Needs the `hub` extra: pip install 'sdxl-edu[hub]'."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError("downloading from the Hugging Face hub needs huggingface_hub: "
                          "pip install 'sdxl-edu[hub]'") from None
    patterns = allow_patterns or ["model_index.json", "*/config.json", "scheduler/*", "tokenizer*/*",
                                  "unet/diffusion_pytorch_model.fp16.safetensors",
                                  "vae/diffusion_pytorch_model.safetensors", "text_encoder*/model.fp16.safetensors"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return snapshot_download(repo_id, allow_patterns=patterns)
