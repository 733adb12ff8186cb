"""Tokens and the two CLIP text encoders, read layer by layer.

SDXL reads the prompt twice (SDXL paper, section 2.1):

- OpenAI CLIP ViT-L/14 (123M parameters, width 768, 12 layers, `quick_gelu`);
- OpenCLIP ViT-bigG/14 (694M parameters, width 1280, 32 layers, `gelu`), which also
  gives the *pooled* embedding: the final layer, final LayerNorm, at the end-of-text
  token, through a learnt projection.

Both run as transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`
(`sdxl_edu.loading.build` builds them from a checkpoint's tensors, and
`sdxl_edu.loading.openclip` converts bigG's names from the single file's).

Tokenization is CLIP's byte-level BPE with 77 positions: `<|startoftext|>`, up to 75
prompt tokens, `<|endoftext|>`, padding. The two tokenizers differ only in the pad token:
CLIP-L pads with `<|endoftext|>` (id 49407), bigG with `!` (id 0). CLIP's text transformer
is causal, so padding cannot change the prompt's own tokens; but no attention mask is used
downstream, and the UNet's cross-attention reads all 77 positions, pads included: the pad
token changes what the UNet sees.

Upstream, at pinned commits: sgm's `FrozenCLIPEmbedder`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/encoders/modules.py#L335),
`FrozenOpenCLIPEmbedder2`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/encoders/modules.py#L400).

>>> from sdxl_edu.nano.tokenizers import build_clip_tokenizer  # a tokenizer of three words
>>> tok = build_clip_tokenizer(["a", "red", "circle"], pad_token="!")
>>> ids = tokenize(tok, ["a red circle"])
>>> ids.shape, tok.convert_ids_to_tokens(ids[0, :6].tolist())
(torch.Size([1, 77]), ['<|startoftext|>', 'a</w>', 'red</w>', 'circle</w>', '<|endoftext|>', '!'])
"""

import warnings

import torch
from transformers import CLIPTokenizer

MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids (B, 77), padded with the tokenizer's pad token. Longer prompts are cut
    to 77 tokens (BOS + 75 + EOS) with a warning naming what was cut, as diffusers does.

    >>> from sdxl_edu.nano.tokenizers import build_clip_tokenizer
    >>> tok = build_clip_tokenizer(["a"])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     ids = tokenize(tok, ["a " * 80])
    >>> ids.shape, "truncated" in str(caught[0].message)
    (torch.Size([1, 77]), True)
    """
    ids = tokenizer(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > MAX_LENGTH:
        cut = tokenizer.batch_decode(full[:, MAX_LENGTH - 1:-1])
        warnings.warn(f"The following part of your input was truncated because CLIP can only handle "
                      f"sequences up to {MAX_LENGTH} tokens: {cut}", stacklevel=3)
    return ids


def text_hidden_states(encoder, ids: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """All hidden states (embeddings, then the output of each layer, *before* the final
    LayerNorm) and, for an encoder with a projection, the pooled embedding.

    >>> from sdxl_edu.testing import bigg
    >>> hidden, pooled = text_hidden_states(bigg(600), torch.zeros(1, 77, dtype=torch.long))
    >>> len(hidden), hidden[-2].shape, pooled.shape  # embeddings + 5 layers
    (6, torch.Size([1, 77, 32]), torch.Size([1, 32]))
    """
    out = encoder(ids.to(encoder.device), output_hidden_states=True)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else None
    return out.hidden_states, pooled


def clip_skip_layer(clip_skip: int | None) -> int:
    """Which hidden state SDXL's context reads, as a negative index.

    SDXL already skips the last layer (it reads the penultimate one, index -2). diffusers'
    `clip_skip=k` skips k layers more: index -(k + 2).

    >>> clip_skip_layer(None), clip_skip_layer(0), clip_skip_layer(1)
    (-2, -2, -3)
    """
    return -((clip_skip or 0) + 2)
