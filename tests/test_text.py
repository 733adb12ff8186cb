"""Tokenizers, both text encoders from single-file keys, and the bigG conversion."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny import WORDS, bigg, clip_l, tokenizers

from sdxl_edu.loading.build import build_text_encoder
from sdxl_edu.loading.openclip import openclip_to_transformers, transformers_to_openclip
from sdxl_edu.loading.single_file import CLIP_L
from sdxl_edu.model.text import text_hidden_states, tokenize


def openclip_reference(sd: dict, ids: torch.Tensor, heads: int):
    """OpenCLIP's text tower written from its definition, on the *single file's* tensors:
    pre-norm residual blocks with torch's MultiheadAttention (packed in_proj) and a causal
    mask, ln_final, then pooled = x[EOS] @ text_projection. Returns (penultimate, pooled)."""
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    n = ids.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    states = [x]
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, x.shape[-1:], sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        attn, _ = F.multi_head_attention_forward(
            h.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1), x.shape[-1], heads,
            sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"], None, None, False, 0.0,
            sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"], training=False, attn_mask=mask,
            need_weights=False)
        x = x + attn.transpose(0, 1)
        h = F.layer_norm(x, x.shape[-1:], sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        x = x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])),
                         sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
        states.append(x)
    final = F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"])
    pooled = final[torch.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]
    return states[-2], pooled


@torch.no_grad()
def test_bigg_from_single_file_keys_matches_openclip():
    tok, tok_2 = tokenizers()
    model = bigg(len(tok), hidden=32, projection=24)  # non-square projection: a transpose shows
    single_file = transformers_to_openclip(model.state_dict())
    assert single_file["text_projection"].shape == (32, 24)  # stored as x @ P
    loaded = build_text_encoder(openclip_to_transformers(single_file), True, "gelu", num_attention_heads=4)
    ids = tokenize(tok_2, ["a red circle on the left", "blue"])
    hidden, pooled = text_hidden_states(loaded, ids)
    penultimate, pooled_ref = openclip_reference(single_file, ids, heads=4)
    assert (hidden[-2] - penultimate).abs().max() < 1e-4
    assert (pooled - pooled_ref).abs().max() < 1e-4


@torch.no_grad()
def test_square_text_projection_transpose_is_caught():
    """With SDXL's square 1280x1280 projection, loading without the transpose raises nothing:
    only the numbers tell."""
    tok, _ = tokenizers()
    model = bigg(len(tok), hidden=32, projection=32)
    single_file = transformers_to_openclip(model.state_dict())
    ids = tokenize(tok, ["a green square"])
    right = build_text_encoder(openclip_to_transformers(single_file), True, "gelu", num_attention_heads=4)
    wrong_sd = openclip_to_transformers(single_file)
    wrong_sd["text_projection.weight"] = single_file["text_projection"]  # forgot .T
    wrong = build_text_encoder(wrong_sd, True, "gelu", num_attention_heads=4)
    _, pooled_ref = openclip_reference(single_file, ids, heads=4)
    assert (text_hidden_states(right, ids)[1] - pooled_ref).abs().max() < 1e-4
    assert (text_hidden_states(wrong, ids)[1] - pooled_ref).abs().max() > 1e-2


@torch.no_grad()
def test_clip_l_from_single_file_keys_matches_the_original():
    tok, _ = tokenizers()
    model = clip_l(len(tok))
    single_file = {CLIP_L + "text_model." + k: v for k, v in model.state_dict().items()}
    sd = {k.removeprefix(CLIP_L): v for k, v in single_file.items()}
    loaded = build_text_encoder(sd, False, "quick_gelu", num_attention_heads=4)
    ids = tokenize(tok, ["a photo of a cat"])
    ours, reference = text_hidden_states(loaded, ids)[0], model(ids, output_hidden_states=True).hidden_states
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(ours, reference))


def test_pad_tokens_differ_and_matter():
    tok, tok_2 = tokenizers()
    ids, ids_2 = tokenize(tok, ["a cat"])[0], tokenize(tok_2, ["a cat"])[0]
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert ids[:4].tolist() == ids_2[:4].tolist()  # BOS a cat EOS
    assert set(ids[4:].tolist()) == {eos}  # CLIP-L pads with <|endoftext|>
    assert set(ids_2[4:].tolist()) == {0}  # bigG pads with "!", id 0
    encoder = bigg(len(tok))
    with torch.no_grad():
        a, b = encoder(ids[None], output_hidden_states=True), encoder(ids_2[None], output_hidden_states=True)
    assert torch.allclose(a.hidden_states[-2][0, :4], b.hidden_states[-2][0, :4], atol=1e-5)  # causal
    assert (a.hidden_states[-2][0, 4:] - b.hidden_states[-2][0, 4:]).abs().max() > 1e-2  # what the UNet reads


def test_long_prompts_are_truncated_with_a_warning():
    tok, _ = tokenizers()
    prompt = " ".join(WORDS * 5)  # 110 words
    with pytest.warns(UserWarning, match="truncated because CLIP can only handle sequences up to 77"):
        ids = tokenize(tok, [prompt])
    assert ids.shape == (1, 77) and ids[0, -1] == tok.eos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenize(tok, ["a cat"])  # short prompts: no warning
