"""Tokens and the two CLIP text encoders.

SDXL reads the prompt twice (SDXL paper, section 2.1):

- OpenAI CLIP ViT-L/14 (123M parameters, width 768, 12 layers, `quick_gelu`);
- OpenCLIP ViT-bigG/14 (694M parameters, width 1280, 32 layers, `gelu`), which also
  gives the *pooled* embedding: the final layer, final LayerNorm, at the end-of-text
  token, through a learnt projection.

Both are run through transformers (`CLIPTextModel`, `CLIPTextModelWithProjection`); this
module builds them from a checkpoint's tensors and converts the single file's OpenCLIP
names for bigG. The conversion has two steps that matter numerically:

1. OpenCLIP stores q, k and v as one `in_proj_weight` of shape (3 d, d): rows [0, d) are
   q, [d, 2d) are k, [2d, 3d) are v.
2. OpenCLIP applies the projection as `pooled @ P`; a torch Linear computes
   `pooled @ W.T`, so `W = P.T`. P is square (1280 x 1280): forgetting the transpose
   raises no error and silently gives a wrong pooled vector.

Tokenization is CLIP's byte-level BPE with 77 positions: `<|startoftext|>`, up to 75
prompt tokens, `<|endoftext|>`, padding. The two tokenizers differ only in the pad token:
CLIP-L pads with `<|endoftext|>` (id 49407), bigG with `!` (id 0). CLIP's text transformer
is causal, so padding cannot change the prompt's own tokens; but no attention mask is used
downstream, and the UNet's cross-attention reads all 77 positions, pads included: the pad
token changes what the UNet sees.

>>> tok = build_clip_tokenizer(["a", "red", "circle"], pad_token="!")
>>> ids = tokenize(tok, ["a red circle"])
>>> ids.shape, tok.convert_ids_to_tokens(ids[0, :6].tolist())
(torch.Size([1, 77]), ['<|startoftext|>', 'a</w>', 'red</w>', 'circle</w>', '<|endoftext|>', '!'])
"""

import warnings

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


# ----------------------------------------------------------------------------- tokenizers

def load_tokenizer(folder: str) -> CLIPTokenizer:
    """A CLIP tokenizer saved in transformers' format (vocab.json, merges.txt, ...)."""
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def build_clip_tokenizer(words: list[str], pad_token: str = EOS) -> CLIPTokenizer:
    """A CLIP-format BPE tokenizer whose vocabulary is the 512 byte symbols plus `words`.

    Laid out as OpenAI's: ids 0-255 are the byte symbols (so `!` is 0, bigG's pad), then
    their end-of-word forms, then the merged tokens (`gr`, `gre`, ..., `green</w>`), then `<|startoftext|>` and
    `<|endoftext|>` last, so the end-of-text token has the largest id (transformers finds
    the pooled position with an argmax over ids, as the released config asks). Merges are
    added until every word is a single token. Used by the tests and by nano SDXL.

    >>> tok = build_clip_tokenizer(["red", "green"])
    >>> tok.convert_ids_to_tokens(tok("green red")["input_ids"])
    ['<|startoftext|>', 'green</w>', 'red</w>', '<|endoftext|>']
    >>> tok.convert_tokens_to_ids(["!", EOS]), len(tok)
    ([0, 519], 520)
    """
    symbols = byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges: list[tuple[str, str]] = []
    for _ in range(64):  # a handful of rounds reaches the fixed point for any word list
        tokenizer = _clip_tokenizer(vocab, merges, pad_token)
        split = [w for w in words if len(tokenizer.tokenize(w)) > 1]
        if not split:
            return tokenizer
        for word in split:
            a, b = tokenizer.tokenize(word)[:2]  # merge the first pair; the next round goes on
            if (a, b) not in merges:
                merges.append((a, b))
                vocab.setdefault(a + b, len(vocab))
    raise RuntimeError(f"could not make single tokens of {split}")


def byte_symbols() -> list[str]:
    """The 256 symbols byte-level BPE uses for the bytes 0-255, in CLIP's vocabulary order:
    printable bytes stand for themselves (`!` first), the others are shifted to U+0100 on.

    >>> symbols = byte_symbols()
    >>> len(symbols), symbols[0], symbols[-1]
    (256, '!', 'Ń')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str) -> CLIPTokenizer:
    vocab = {**vocab, BOS: len(vocab), EOS: len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=MAX_LENGTH)


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids (B, 77), padded with the tokenizer's pad token. Longer prompts are cut
    to 77 tokens (BOS + 75 + EOS) with a warning naming what was cut, as diffusers does.

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


# ----------------------------------------------------------------------------- encoders

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

    >>> from sdxl_edu.toy import bigg
    >>> encoder = build_text_encoder(bigg(600).state_dict(), True, "gelu", num_attention_heads=4)
    >>> encoder.config.hidden_size, encoder.config.num_hidden_layers
    (32, 5)
    """
    config = clip_config_from_state_dict(sd, hidden_act, **overrides)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    expected = model.state_dict().keys()
    sd = _match_prefix(sd, expected)
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        from .loading import CheckpointError
        raise CheckpointError(f"text encoder ({cls.__name__}) keys do not match: "
                              f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
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


def _match_prefix(sd: dict, expected) -> dict:
    """transformers 5 dropped the `text_model.` prefix from CLIPTextModel's keys (not from
    CLIPTextModelWithProjection's); accept either spelling."""
    want_prefix = any(k.startswith("text_model.") for k in expected)
    has_prefix = any(k.startswith("text_model.") for k in sd)
    if want_prefix and not has_prefix:
        return {("text_model." + k if k != "text_projection.weight" else k): v for k, v in sd.items()}
    if has_prefix and not want_prefix:
        return {k.removeprefix("text_model."): v for k, v in sd.items()}
    return sd


def text_hidden_states(encoder, ids: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """All hidden states (embeddings, then the output of each layer, *before* the final
    LayerNorm) and, for an encoder with a projection, the pooled embedding.

    >>> from sdxl_edu.toy import bigg
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


# ----------------------------------------------------------------------------- OpenCLIP bigG

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

    >>> from sdxl_edu.toy import bigg
    >>> sd = bigg(600).state_dict()
    >>> back = openclip_to_transformers(transformers_to_openclip(sd))
    >>> sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    True
    """
    out, qkv = {}, {}
    for key, value in _match_prefix(sd, ["text_model."]).items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        if ".self_attn." in key and key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
            layer = key.split(".")[3]
            qkv.setdefault((layer, key.rsplit(".", 1)[1]), {})[key.split(".")[-2][0]] = value
            continue
        for oc, hf in reversed(_OPENCLIP_NAMES):
            key = key.replace(hf, oc)
        out[key] = value
    for (layer, kind), parts in qkv.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"])
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
