"""The diffusers folder layout: `model_index.json` and one sub-folder per component.

Each component has a `config.json`, read into the same dataclasses the model is built from,
and its weights under diffusers' names, mapped to ours by `diffusers_unet_names` and
`diffusers_vae_names`: two short rules derived from the same config the model is built
from, so that any SDXL-shaped UNet (the distilled ones too) maps without a table.
"""

import json
from pathlib import Path

import torch
from torch import nn

from ..config import UNetConfig, VAEConfig
from ..model.conditioning import Conditioner
from ..model.unclip import CLIPEmbeddingNoiseAugmentation
from ..model.unet import UNet
from ..model.vae import AutoencoderKL
from .build import build, build_image_encoder, build_text_encoder
from .checkpoint import CheckpointError, SafetensorsFile, refuse_pickle
from .hub import load_tokenizer
from .single_file import block_counts


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
    levels, n = range(len(widths)), len(widths)
    blocks, heads = one_each(cfg["layers_per_block"], n), one_each(cfg["attention_head_dim"], n)
    attn = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
    layers = one_each(cfg.get("transformer_layers_per_block", 1), n)
    encoder = [d if a else 0 for i, a in zip(levels, attn) for d in one_each(layers[i], blocks[i])]
    reverse = cfg.get("reverse_transformer_layers_per_block") or [layers[i] for i in reversed(levels)]
    decoder = [d if a else 0 for up, (i, a) in enumerate(zip(reversed(levels), reversed(attn)))
               for d in one_each(reverse[up], blocks[i] + 1)]
    middle = {"UNetMidBlock2DCrossAttn": one_each(layers[-1], 1)[0], "UNetMidBlock2D": 0, None: None}[
        cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")]
    head_dims = {w // h for w, h, a in zip(widths, heads, attn) if a}
    return UNetConfig(
        channels=tuple(widths), transformer_depth_middle=middle, **block_counts(blocks, encoder, decoder),
        num_head_channels=head_dims.pop() if len(head_dims) == 1 else 64, context_dim=cfg["cross_attention_dim"],
        adm_in_channels=cfg.get("projection_class_embeddings_input_dim") or 0, in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"], norm_groups=cfg.get("norm_num_groups", 32))


def one_each(value: int | list, n: int) -> list:
    """diffusers gives a number once for all levels (or blocks) or a list of one each.

    >>> one_each(2, 3), one_each([1, 2, 10], 3)
    ([2, 2, 2], [1, 2, 10])
    """
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def read_diffusers_vae_config(cfg: dict) -> VAEConfig:
    widths = cfg["block_out_channels"]
    return VAEConfig(ch=widths[0], ch_mult=tuple(w // widths[0] for w in widths),
                     num_res_blocks=cfg["layers_per_block"], z_channels=cfg["latent_channels"],
                     in_channels=cfg["in_channels"], out_ch=cfg["out_channels"],
                     norm_groups=cfg.get("norm_num_groups", 32), scaling_factor=cfg.get("scaling_factor", 0.13025))


# ----------------------------------------------------------------------------- loading

def load_diffusers_folder(folder: Path, dtype: torch.dtype, device) -> dict:
    """A diffusers SDXL folder (base or refiner), or a Stable unCLIP one (SD 2.1 unCLIP,
    `StableUnCLIPImg2ImgPipeline`'s: its `image_normalizer` gives it away): `model_index.json`
    and one sub-folder per component."""
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"{folder} has no model_index.json: it is not a diffusers pipeline folder. "
                              "Pass a single .safetensors file, or the folder that holds model_index.json.")
    index = json.loads((folder / "model_index.json").read_text())
    kind = "unclip" if "image_normalizer" in index else "refiner" if not (index.get("text_encoder") or [None])[0] \
        else "base"

    unet_json = json.loads((folder / "unet" / "config.json").read_text())
    unet_config = read_diffusers_unet_config(unet_json)
    names = diffusers_unet_names(unet_config)
    if kind == "unclip":  # y enters SD 2.1 unCLIP's UNet as a "class" embedding, SDXL's as an "addition"
        names = {k: v.replace("add_embedding.", "class_embedding.") for k, v in names.items()}
    unet = _build_from_diffusers(folder / "unet", UNet, unet_config, dtype, device, "UNet", names)
    vae_config = read_diffusers_vae_config(json.loads((folder / "vae" / "config.json").read_text()))
    vae = _build_from_diffusers(folder / "vae", AutoencoderKL, vae_config, dtype, device, "VAE")

    def encoder(name: str, with_projection: bool):
        if not (folder / name).is_dir():
            return None
        cfg = json.loads((folder / name / "config.json").read_text())
        with SafetensorsFile(str(_weights_file(folder / name, "model", dtype))) as f:
            sd = {k: f.get(k, dtype) for k in f.keys() if not k.endswith("position_ids")}
        settings = {k: cfg[k] for k in ("hidden_act", "num_attention_heads", "layer_norm_eps",
                                        "bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
        return build_text_encoder(sd, with_projection, dtype=dtype, device=device, **settings)

    scheduler = folder / "scheduler" / "scheduler_config.json"
    parts = dict(unet=unet, vae=vae, kind=kind,
                 scheduler_config=json.loads(scheduler.read_text()) if scheduler.is_file() else {},
                 default_size=(unet_json.get("sample_size") or 128) * vae_config.downsampling_factor)
    if kind == "unclip":  # SD 2.x's one encoder (OpenCLIP ViT-H, its last layer removed) in bigG's slot
        conditioner = Conditioner(None, None, load_tokenizer(str(folder / "tokenizer")),
                                  encoder("text_encoder", False), force_zeros_for_empty_prompt=False,
                                  final_layer_norm=True, layers_removed=1)
        return parts | dict(conditioner=conditioner) | _unclip_image_parts(folder, unet, dtype, device)
    text_encoder = encoder("text_encoder", False) if kind == "base" else None
    tok = load_tokenizer(str(folder / "tokenizer")) if kind == "base" else None
    conditioner = Conditioner(tok, text_encoder, load_tokenizer(str(folder / "tokenizer_2")),
                              encoder("text_encoder_2", True),
                              force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", kind == "base"))
    return parts | dict(conditioner=conditioner)


def _unclip_image_parts(folder: Path, unet: UNet, dtype: torch.dtype, device) -> dict:
    """The image side of a Stable unCLIP folder: CLIP's image tower (`image_encoder/`, in
    transformers' layout already) and the embedding statistics of its noise augmentation
    (`image_normalizer/`: diffusers' `mean` and `std` are the released `data_mean`, `data_std`)."""
    cfg = json.loads((folder / "image_encoder" / "config.json").read_text())
    with SafetensorsFile(str(_weights_file(folder / "image_encoder", "model", dtype))) as f:
        tower = {k: f.get(k, dtype) for k in f.keys() if not k.endswith("position_ids")}
    image_encoder = build_image_encoder(tower, cfg.get("hidden_act", "gelu"), dtype=dtype, device=device,
                                        num_attention_heads=cfg["num_attention_heads"])
    dim = image_encoder.config.projection_dim
    if unet.config.adm_in_channels != 2 * dim:
        raise CheckpointError(f"{folder}: the UNet reads a vector y of {unet.config.adm_in_channels} numbers, but "
                              f"the image tower gives {dim}-wide embeddings (y is the embedding and its noise "
                              f"level's embedding, {2 * dim} numbers): the folder mixes two models.")
    noising = folder / "image_noising_scheduler" / "scheduler_config.json"
    schedule = json.loads(noising.read_text()).get("beta_schedule") if noising.is_file() else "squaredcos_cap_v2"
    if schedule != "squaredcos_cap_v2":
        raise CheckpointError(f"{folder}: the image embedding is noised on a {schedule!r} schedule; Stable unCLIP's "
                              "(and CLIPEmbeddingNoiseAugmentation's) is 'squaredcos_cap_v2'.")
    noise_augmentor = CLIPEmbeddingNoiseAugmentation(dim).to(device)
    with SafetensorsFile(str(_weights_file(folder / "image_normalizer", "diffusion_pytorch_model", dtype))) as f:
        noise_augmentor.load_state_dict({"data_mean": f.get("mean", torch.float32),
                                         "data_std": f.get("std", torch.float32)})
    return dict(image_encoder=image_encoder, noise_augmentor=noise_augmentor)


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


def _build_from_diffusers(folder: Path, model_class, config, dtype, device, what: str,
                          names: dict[str, str] | None = None) -> nn.Module:
    """Build one of our models from a diffusers component folder, through the key map."""
    names = names or (diffusers_unet_names if model_class is UNet else diffusers_vae_names)(config)
    with SafetensorsFile(str(_weights_file(folder, "diffusion_pytorch_model", dtype))) as f:
        ours_by_theirs = {theirs: ours for ours, theirs in names.items()}
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
        shapes = {}
        for theirs, shape in f.shapes().items():
            ours = ours_by_theirs.get(theirs, theirs)
            shapes[ours] = _as_ours(shape, expected.get(ours))

        def read(key: str) -> torch.Tensor:
            return f.get(names[key], dtype).reshape(expected[key]).to(device)
        return build(model_class, config, read, shapes, what)


def _as_ours(shape: tuple, ours: tuple | None) -> tuple:
    """diffusers stores the VAE's attention projections as Linear [C, C], we as 1x1
    convolutions [C, C, 1, 1]: the same numbers, so their shape counts as ours."""
    if ours is not None and len(ours) == 4 and tuple(shape) == ours[:2]:
        return ours
    return shape
