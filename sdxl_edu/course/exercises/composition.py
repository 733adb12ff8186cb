"""Checkers for lesson 15, composition and attention control: the learner's edit rules are
compared with `sdxl_edu.editing.prompt_to_prompt`'s own edit, run on the spot."""

from types import SimpleNamespace

import torch

from ...editing.prompt_to_prompt import AttentionInjection
from .verdict import NOT_YET, Verdict, close

_CROSS = SimpleNamespace(is_cross_attention=True)  # all the edit asks of the layer it runs in


def _library_edit(source, target, step: int, cross_steps: int, weights: dict[int, float]) -> torch.Tensor:
    """The library's edited maps for the edited rows, given the source and edited rows' maps."""
    injection = AttentionInjection(pairs=source.shape[0], cross_steps=cross_steps, self_steps=0, weights=weights,
                                   latent_pixels=source.shape[2], step=step)
    return injection.edit(_CROSS, torch.cat([source, target]))[source.shape[0]:]


def _maps(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    source, target = (torch.rand(2, 3, 16, 9, generator=generator).softmax(-1) for _ in range(2))
    return source, target


def injection_rule(fn) -> Verdict:
    """`fn(source, target, step, cross_steps)` should give the edited prompt's cross-attention
    maps at `step` (0 is the first, noisiest step) for a word swap.

    >>> injection_rule(lambda s, t, step, n: s if step < n else t).ok
    True
    >>> injection_rule(lambda s, t, step, n: s).ok  # injecting to the end
    False
    """
    if fn is None:
        return NOT_YET
    source, target = _maps(0)
    for step in (0, 7, 8, 19):
        got = fn(source.clone(), target.clone(), step, 8)
        if got is None:
            return NOT_YET
        truth = _library_edit(source, target, step, 8, {})
        if tuple(got.shape) != tuple(truth.shape) or not close(got, truth):
            which = "the source's" if close(truth, source) else "its own"
            return Verdict(False, f"at step {step} of 20, with the first 8 injected, the edited run should use "
                                  f"{which} maps. The layout is settled in the first steps; after them the edit is "
                                  "left free to draw its new word's details.")
    return Verdict(True, "the source's maps for the first steps, the edit's own afterwards: Hertz et al.'s "
                         "Edit(M_t, M*_t, t) for a word swap.")


def reweight_rule(fn) -> Verdict:
    """`fn(maps, positions, c)` should scale the attention that every pixel gives to the tokens
    at `positions` by `c`, and leave the rest as it is (maps: batch, heads, pixels, tokens).

    >>> def scale(maps, positions, c):
    ...     maps = maps.clone(); maps[..., positions] *= c; return maps
    >>> reweight_rule(scale).ok
    True
    >>> reweight_rule(lambda maps, positions, c: (maps * c).softmax(-1)).ok
    False
    """
    if fn is None:
        return NOT_YET
    source, _ = _maps(1)
    for positions, c in (([3], 2.0), ([2, 5], 0.0), ([4], -1.0)):
        got = fn(source.clone(), positions, c)
        if got is None:
            return NOT_YET
        truth = _library_edit(source, source, 0, 1, dict.fromkeys(positions, c))
        if tuple(got.shape) != tuple(truth.shape) or not close(got, truth):
            return Verdict(False, f"with c = {c} on tokens {positions} your maps differ from the paper's. Only the "
                                  "chosen tokens' columns are multiplied by c, after the softmax; nothing is "
                                  "renormalised, so a pixel reads that word c times as strongly.")
    return Verdict(True, "the chosen word's column scaled by c, every other column untouched.")


def causal_reach(fn, pipe) -> Verdict:
    """`fn(j)` should give the positions (0..76) of the context whose vectors change when the
    prompt's token at position j changes; checked by changing one word on the spot and seeing
    which rows of `pipe.encode_prompt`'s context move.

    >>> from sdxl_edu import load_pipeline
    >>> pipe = load_pipeline()
    >>> causal_reach(lambda j: range(j, 77), pipe).ok, causal_reach(lambda j: [j], pipe).ok
    (True, False)
    """
    if fn is None:
        return NOT_YET
    a, b = "a red circle and a blue square", "a red triangle and a blue square"
    for j, (x, y) in ((3, (a, b)), (2, (a, a.replace("red", "green")))):
        got = fn(j)
        if got is None:
            return NOT_YET
        context = [pipe.encode_prompt(p, do_classifier_free_guidance=False).context[0] for p in (x, y)]
        truth = sorted(int(i) for i in torch.nonzero((context[0] - context[1]).abs().amax(-1) > 1e-5).flatten())
        got = sorted(int(i) for i in ([got] if isinstance(got, int) else got))
        if got != truth:
            return Verdict(False, f"changing token {j} moved the context at positions {truth[0]}..{truth[-1]} "
                                  f"({len(truth)} of them), not {got[:6]}{'...' if len(got) > 6 else ''}. Both "
                                  "text encoders are causal transformers: position i reads positions 0..i.")
    return Verdict(True, "the word and every position after it, the padding included: in a causal encoder a word's "
                         "meaning spreads to every later token, so a word's own column is not the only way in.")
