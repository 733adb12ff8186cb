"""One strict builder for every part: build on the meta device, check, then fill.

Every model is first built on the meta device (no memory, no random initialisation); its
state dict then lists every tensor it expects, with its shape. `check_keys` compares that
list with the file's and names every missing, unexpected and wrongly shaped tensor in one
error, before any data is read; only then is each tensor copied in, once, in the target
dtype (`load_state_dict(..., assign=True)`). The UNet and VAE are our own modules; the two
text encoders are transformers' CLIP models, built here from their tensors' shapes.
"""

import json
from typing import Callable

import torch
from torch import nn
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig,
                          CLIPVisionModelWithProjection)

from .checkpoint import CheckpointError


def build(model_class, config, read: Callable[[str], torch.Tensor], shapes: dict[str, tuple],
          what: str) -> nn.Module:
    """Build `model_class(config)` on the meta device, check every key and shape against the
    file's `shapes`, then fill it with `read(key)` (a one-copy read in the target dtype).

    >>> from sdxl_edu.config import VAEConfig
    >>> from sdxl_edu.model.vae import AutoencoderKL
    >>> tiny = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
    >>> with torch.device("meta"):
    ...     shapes = {k: tuple(v.shape) for k, v in AutoencoderKL(tiny).state_dict().items()}
    >>> vae = build(AutoencoderKL, tiny, lambda key: torch.zeros(shapes[key]), shapes, "VAE")
    >>> vae.decoder.conv_out.weight.abs().sum().item()
    0.0
    """
    with torch.device("meta"):
        module = model_class(config)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_keys(expected, shapes, what)
    module.load_state_dict({k: read(k) for k in expected}, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def check_keys(expected: dict[str, tuple], found: dict[str, tuple], what: str) -> None:
    """Name the missing, unexpected and wrongly shaped tensors, if any.

    >>> check_keys({"a": (2,), "b": (3,)}, {"a": (4,), "c": (1,)}, "UNet")
    Traceback (most recent call last):
    ...
    sdxl_edu.loading.checkpoint.CheckpointError: The UNet tensors do not match an SDXL UNet: missing: b; unexpected: c; wrong shape: a: file (4,), model (2,). The file is damaged or is not an SDXL checkpoint.
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


def metadata_overrides(metadata: dict) -> dict:
    """What a file's `__metadata__["sdxl_edu"]` (JSON) says that shapes cannot tell.

    >>> metadata_overrides({"sdxl_edu": '{"unet": {"num_head_channels": 32}}'})
    {'unet': {'num_head_channels': 32}}
    """
    return json.loads(metadata["sdxl_edu"]) if "sdxl_edu" in metadata else {}


# ----------------------------------------------------------------------------- text encoders

def clip_config_from_state_dict(sd: dict[str, torch.Tensor], hidden_act: str,
                                **overrides) -> CLIPTextConfig:
    """Read a CLIP text encoder's shape from its (transformers-named) tensors.

    Shapes give everything but the activation (OpenAI's CLIP-L uses `quick_gelu`, OpenCLIP
    bigG `gelu`: the caller knows which slot it loads) and the head count, which is
    width / 64 in both released encoders unless `overrides` says otherwise.
    """
    p = "text_model." if "text_model.embeddings.token_embedding.weight" in sd else ""
    vocab_size, width = sd[p + "embeddings.token_embedding.weight"].shape
    n_layers = sum(1 for k in sd if k.startswith(p + "encoder.layers.") and k.endswith("layer_norm1.weight"))
    config = dict(
        vocab_size=vocab_size, hidden_size=width, num_hidden_layers=n_layers,
        num_attention_heads=max(1, width // 64),
        intermediate_size=sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        max_position_embeddings=sd[p + "embeddings.position_embedding.weight"].shape[0],
        projection_dim=sd["text_projection.weight"].shape[0] if "text_projection.weight" in sd else width,
        hidden_act=hidden_act, layer_norm_eps=1e-5,
        # The released configs keep the pre-2023 ids; eos_token_id=2 makes transformers find
        # the pooled position as the argmax of the ids, i.e. the first <|endoftext|>.
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    config.update(overrides)
    return CLIPTextConfig(**config)


def build_text_encoder(sd: dict[str, torch.Tensor], with_projection: bool, hidden_act: str,
                       dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **overrides):
    """Instantiate `CLIPTextModel` or `CLIPTextModelWithProjection` and load `sd` strictly.

    Built on the meta device (no memory, no random init), then filled with `sd`.

    >>> from sdxl_edu.testing import bigg
    >>> encoder = build_text_encoder(bigg(600).state_dict(), True, "gelu", num_attention_heads=4)
    >>> encoder.config.hidden_size, encoder.config.num_hidden_layers
    (32, 5)
    """
    config = clip_config_from_state_dict(sd, hidden_act, **overrides)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = match_prefix(sd, expected)
    check_keys(expected, {k: tuple(v.shape) for k, v in sd.items()}, f"text encoder ({cls.__name__})")
    model.load_state_dict({k: v.to(device, dtype) for k, v in sd.items()}, strict=True, assign=True)
    _fill_position_ids(model, device)
    return model.eval().requires_grad_(False)


def build_image_encoder(sd: dict[str, torch.Tensor], hidden_act: str, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", **overrides) -> CLIPVisionModelWithProjection:
    """CLIP's image tower as transformers' `CLIPVisionModelWithProjection`, its shape read
    from its (transformers-named) tensors: the patch size from the patch embedding, the
    picture's size from the number of positions (one per patch, plus the class token).
    Heads are width / 64 (ViT-L/14: 16) unless `overrides` says otherwise (ViT-H/14: 16 of 80).

    >>> tower = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=8, intermediate_size=16,
    ...     num_attention_heads=2, num_hidden_layers=2, image_size=16, patch_size=8, projection_dim=6))
    >>> built = build_image_encoder(tower.state_dict(), "gelu", num_attention_heads=2)
    >>> c = built.config; c.image_size, c.patch_size, c.num_hidden_layers, c.projection_dim
    (16, 8, 2, 6)
    """
    width, _, patch, _ = sd["vision_model.embeddings.patch_embedding.weight"].shape
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    config = dict(
        hidden_size=width, intermediate_size=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=sum(1 for k in sd if k.startswith("vision_model.encoder.layers.")
                              and k.endswith("layer_norm1.weight")),
        num_attention_heads=max(1, width // 64), patch_size=patch, image_size=round((positions - 1) ** 0.5) * patch,
        projection_dim=sd["visual_projection.weight"].shape[0], hidden_act=hidden_act, layer_norm_eps=1e-5)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config | overrides))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys(expected, {k: tuple(v.shape) for k, v in sd.items()}, "image encoder (CLIPVisionModelWithProjection)")
    model.load_state_dict({k: v.to(device, dtype) for k, v in sd.items()}, strict=True, assign=True)
    _fill_position_ids(model, device)
    return model.eval().requires_grad_(False)


def _fill_position_ids(model, device) -> None:
    """transformers keeps `position_ids` (0, 1, ..., 76) as a non-persistent buffer, so it is
    not in any state dict and the meta-device build leaves it empty: fill it."""
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            if not name.endswith("position_ids"):
                raise RuntimeError(f"unexpected uninitialised buffer {name}")
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1], device=device).expand(buf.shape),
                                  persistent=False)


def match_prefix(sd: dict, expected) -> dict:
    """transformers 5 dropped the `text_model.` prefix from CLIPTextModel's keys (not from
    CLIPTextModelWithProjection's); accept either spelling."""
    want_prefix = any(k.startswith("text_model.") for k in expected)
    has_prefix = any(k.startswith("text_model.") for k in sd)
    if want_prefix and not has_prefix:
        return {("text_model." + k if k != "text_projection.weight" else k): v for k, v in sd.items()}
    if has_prefix and not want_prefix:
        return {k.removeprefix("text_model."): v for k, v in sd.items()}
    return sd
