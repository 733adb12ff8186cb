"""OpenCLIP bigG's text tower, as the single file stores it and as transformers names it.

The released single file keeps bigG under OpenCLIP's names (`transformer.resblocks.N...`);
we run it as transformers' `CLIPTextModelWithProjection`. Two steps of the conversion
matter numerically:

1. OpenCLIP stores q, k and v as one `in_proj_weight` of shape (3 d, d): rows [0, d) are
   q, [d, 2d) are k, [2d, 3d) are v.
2. OpenCLIP applies the projection as `pooled @ P`; a torch Linear computes
   `pooled @ W.T`, so `W = P.T`. P is square (1280 x 1280): forgetting the transpose
   raises no error and silently gives a wrong pooled vector.

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
    out = {}
    for key, value in sd.items():
        if key in ("logit_scale", "attn_mask") or key.endswith("position_ids"):
            continue  # CLIP's contrastive temperature and buffers: not part of the text model
        if key == "text_projection":
            out["text_projection.weight"] = value.T.contiguous()
        elif key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
            prefix = _openclip_name(key.rsplit(".attn.", 1)[0])
            kind = key.rsplit("_", 1)[1]  # weight | bias
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}.self_attn.{name}_proj.{kind}"] = part.contiguous()
        else:
            out[_openclip_name(key)] = value
    return out


def transformers_to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `openclip_to_transformers`: write a bigG-like encoder in the single
    file's layout (used to save nano SDXL and synthetic test checkpoints).

    >>> from sdxl_edu.testing import bigg
    >>> sd = bigg(600).state_dict()
    >>> back = openclip_to_transformers(transformers_to_openclip(sd))
    >>> sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    True
    """
    out, qkv = {}, {}
    for key, value in match_prefix(sd, ["text_model."]).items():
        # text_model.encoder.layers.{layer}.self_attn.{q,k,v}_proj.{weight,bias}
        parts = key.split(".")
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif len(parts) == 7 and parts[5] in ("q_proj", "k_proj", "v_proj"):
            layer, projection, kind = parts[3], parts[5], parts[6]
            qkv.setdefault((layer, kind), {})[projection] = value
        else:
            for oc, hf in reversed(_OPENCLIP_NAMES):
                key = key.replace(hf, oc)
            out[key] = value
    for (layer, kind), p in qkv.items():  # rows [0, d) q, [d, 2d) k, [2d, 3d) v
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([p["q_proj"], p["k_proj"], p["v_proj"]])
    return out


_OPENCLIP_NAMES = [  # (OpenCLIP, transformers); applied as substring replacements
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.", "text_model.final_layer_norm."),
    ("transformer.resblocks.", "text_model.encoder.layers."),
    (".ln_1.", ".layer_norm1."),
    (".ln_2.", ".layer_norm2."),
    (".attn.out_proj.", ".self_attn.out_proj."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
]


def _openclip_name(key: str) -> str:
    for oc, hf in _OPENCLIP_NAMES:
        key = key.replace(oc, hf)
    return key
