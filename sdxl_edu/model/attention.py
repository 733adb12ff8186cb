"""Multi-head attention, the one module in which the image looks at itself and at the text.

Every attention layer of the SDXL UNet is this module. In a SpatialTransformer block,
`attn1` is self-attention (queries, keys and values all come from the image tokens) and
`attn2` is cross-attention (queries from the image, keys and values from the text
context), which is the only place the prompt's tokens enter the UNet:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,   Q = x W_q,  K = c W_k,  V = c W_v

There are two ways to compute it, and they give the same numbers:

- the fused path, `torch.nn.functional.scaled_dot_product_attention`, which never stores
  the (tokens x tokens) probability matrix; it is the default and the fast one;
- the explicit path, which materialises `softmax(Q K^T / sqrt(d))` so that a *probe* can
  look at it or an *edit* can change it. It runs only in layers that have one attached.

A probe is any callable `probe(module, probs)` with `probs` of shape
(batch, heads, query tokens, key tokens); `sdxl_edu.inspection.capture` builds the useful ones.
An edit is a callable `edit(module, probs) -> probs` whose result the layer uses instead
(`sdxl_edu.editing.prompt_to_prompt` injects and re-weights maps so); a probe in the same
layer sees the edited maps, the ones that were used.

Upstream, at pinned commits: `CrossAttention`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/attention.py#L255).

>>> import torch
>>> attn = Attention(query_dim=8, heads=2, dim_head=4, context_dim=6)
>>> x, context = torch.randn(1, 5, 8), torch.randn(1, 3, 6)
>>> fast = attn(x, context)
>>> seen = []
>>> attn.probe = lambda module, probs: seen.append(probs)
>>> torch.allclose(attn(x, context), fast, atol=1e-6), seen[0].shape
(True, torch.Size([1, 2, 5, 3]))
>>> torch.allclose(seen[0].sum(-1), torch.ones(1, 2, 5))
True
>>> attn.probe, attn.edit = None, lambda module, probs: torch.zeros_like(probs)  # attend to nothing
>>> attn(x, context).abs().max() == attn.to_out[0].bias.abs().max()  # only the output bias is left
tensor(True)
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Probe = Callable[["Attention", torch.Tensor], None]
Edit = Callable[["Attention", torch.Tensor], torch.Tensor]


class Attention(nn.Module):
    """Multi-head (self- or cross-) attention with the checkpoint's names.

    `to_q`, `to_k`, `to_v` have no bias; `to_out.0` has one (`to_out.1` was a dropout in
    the original code, which is why the index is there). With `context_dim=None` this is
    self-attention.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.is_cross_attention = context_dim is not None
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim))
        self.probe: Probe | None = None
        self.edit: Edit | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (self._split_heads(proj(t)) for proj, t in
                   ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        if self.probe is None and self.edit is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            probs = attention_probs(q, k)
            if self.edit is not None:
                probs = self.edit(self, probs)
            if self.probe is not None:
                self.probe(self, probs)
            out = probs @ v
        return self.to_out(self._merge_heads(out))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)  # (b, heads, n, d)

    @staticmethod
    def _merge_heads(t: torch.Tensor) -> torch.Tensor:
        b, h, n, d = t.shape
        return t.transpose(1, 2).reshape(b, n, h * d)


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) over the keys, computed in float32 for a stable softmax.

    >>> q = k = torch.zeros(1, 1, 2, 4)
    >>> attention_probs(q, k)  # equal scores: every key gets the same weight
    tensor([[[[0.5000, 0.5000],
              [0.5000, 0.5000]]]])
    """
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.softmax(dim=-1).to(q.dtype)
