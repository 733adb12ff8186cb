"""OpenCLIP's towers, as the single files store them and as transformers names them.

The released SDXL file keeps bigG's text tower under OpenCLIP's names
(`transformer.resblocks.N...`), and the released unCLIP files keep CLIP's image tower
(`visual.conv1`, `visual.transformer.resblocks.N...`) so; we run them as transformers'
`CLIPTextModelWithProjection` and `CLIPVisionModelWithProjection`. Two steps of the
conversion matter numerically:

1. OpenCLIP stores q, k and v as one `in_proj_weight` of shape (3 d, d): rows [0, d) are
   q, [d, 2d) are k, [2d, 3d) are v.
2. OpenCLIP applies each projection as `pooled @ P`; a torch Linear computes
   `pooled @ W.T`, so `W = P.T`. bigG's text P is square (1280 x 1280): forgetting the
   transpose raises no error and silently gives a wrong pooled vector.

Upstream, at pinned commits: sgm's `FrozenOpenCLIPEmbedder2`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/encoders/modules.py#L400).
"""

import torch

from .build import match_prefix


def openclip_to_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename OpenCLIP text-tower tensors (`transformer.resblocks.N...`) to
    `CLIPTextModelWithProjection`'s, splitting in_proj and transposing text_projection.

    >>> d = 4
    >>> oc = {"text_projection": torch.arange(16.).view(4, 4),
    ...       "transformer.resblocks.0.attn.in_proj_weight": torch.arange(3. * d * d).view(3 * d, d)}
    >>> hf = openclip_to_transformers(oc)
    >>> torch.equal(hf["text_projection.weight"], oc["text_projection"].T)
    True
    >>> hf["text_model.encoder.layers.0.self_attn.k_proj.weight"][0, 0].item()  # row d: k
    16.0
    """
    return _to_transformers(sd, _TEXT_NAMES, "text_projection", "text_projection.weight")


def transformers_to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `openclip_to_transformers`: write a bigG-like encoder in the single
    file's layout (used to save nano SDXL and synthetic test checkpoints).

    >>> from sdxl_edu.testing import bigg
    >>> sd = bigg(600).state_dict()
    >>> back = openclip_to_transformers(transformers_to_openclip(sd))
    >>> sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    True
    """
    return _to_openclip(match_prefix(sd, ["text_model."]), _TEXT_NAMES, "text_projection", "text_projection.weight")


def openclip_visual_to_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenCLIP image tower's tensors (`conv1`, `transformer.resblocks.N...`,
    `proj`; without the `visual.` prefix) to `CLIPVisionModelWithProjection`'s.

    >>> hf = openclip_visual_to_transformers({"proj": torch.arange(6.).view(3, 2), "ln_pre.weight": torch.ones(3)})
    >>> hf["visual_projection.weight"].shape, sorted(hf)  # proj (width, d) is applied as x @ proj
    (torch.Size([2, 3]), ['vision_model.pre_layrnorm.weight', 'visual_projection.weight'])
    """
    return _to_transformers(sd, _VISUAL_NAMES, "proj", "visual_projection.weight")


def transformers_to_openclip_visual(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `openclip_visual_to_transformers`.

    >>> from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    >>> tower = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=8, intermediate_size=16,
    ...     num_attention_heads=2, num_hidden_layers=2, image_size=16, patch_size=8, projection_dim=6))
    >>> sd = tower.state_dict()
    >>> back = openclip_visual_to_transformers(transformers_to_openclip_visual(sd))
    >>> sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    True
    """
    return _to_openclip(sd, _VISUAL_NAMES, "proj", "visual_projection.weight")


def _to_transformers(sd: dict, names: list, projection: str, linear: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if key in ("logit_scale", "attn_mask") or key.endswith("position_ids"):
            continue  # CLIP's contrastive temperature and buffers: not part of the tower
        if key == projection:
            out[linear] = value.T.contiguous()
        elif key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
            prefix = _rename(key.rsplit(".attn.", 1)[0], names)
            kind = key.rsplit("_", 1)[1]  # weight | bias
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}.self_attn.{name}_proj.{kind}"] = part.contiguous()
        else:
            out[_rename(key, names)] = value
    return out


def _to_openclip(sd: dict, names: list, projection: str, linear: str) -> dict[str, torch.Tensor]:
    out, qkv = {}, {}
    for key, value in sd.items():
        # {text,vision}_model.encoder.layers.{layer}.self_attn.{q,k,v}_proj.{weight,bias}
        parts = key.split(".")
        if key == linear:
            out[projection] = value.T.contiguous()
        elif len(parts) == 7 and parts[5] in ("q_proj", "k_proj", "v_proj"):
            layer, which, kind = parts[3], parts[5], parts[6]
            qkv.setdefault((layer, kind), {})[which] = value
        else:
            for oc, hf in reversed(names):
                key = key.replace(hf, oc)
            out[key] = value
    for (layer, kind), p in qkv.items():  # rows [0, d) q, [d, 2d) k, [2d, 3d) v
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([p["q_proj"], p["k_proj"], p["v_proj"]])
    return out


_BLOCK_NAMES = [  # (OpenCLIP, transformers) inside a residual block, the same in both towers
    (".ln_1.", ".layer_norm1."),
    (".ln_2.", ".layer_norm2."),
    (".attn.out_proj.", ".self_attn.out_proj."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
]
_TEXT_NAMES = [  # applied in order as substring replacements
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.", "text_model.final_layer_norm."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
    *_BLOCK_NAMES,
]
_VISUAL_NAMES = [
    ("conv1.weight", "vision_model.embeddings.patch_embedding.weight"),  # no bias in either
    ("class_embedding", "vision_model.embeddings.class_embedding"),
    ("positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("ln_pre.", "vision_model.pre_layrnorm."),  # sic: transformers' name
    ("ln_post.", "vision_model.post_layernorm."),
    ("transformer.resblocks.", "vision_model.encoder.layers."),
    *_BLOCK_NAMES,
]


def _rename(key: str, names: list) -> str:
    for oc, hf in names:
        key = key.replace(oc, hf)
    return key
