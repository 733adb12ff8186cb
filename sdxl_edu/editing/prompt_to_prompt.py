"""Prompt-to-prompt: edit a generated picture by editing its prompt, and keep everything else.

Change one word of a prompt and rerun with the same seed, and the picture usually changes
everywhere: the layout is decided in the first, noisiest steps, and a new word moves every
pixel's attention a little. Hertz et al. 2022 ("Prompt-to-Prompt Image Editing with Cross
Attention Control", section 3.2) observed that the layout lives in the cross-attention maps
M = softmax(Q K^T / sqrt(d)): which pixels read which word. So they generate the source
prompt P and the edited prompt P* side by side from the same noise, and in the edited run
they replace its maps by the source's for the first steps (their Edit(M_t, M*_t, t), eq. 2):

    word swap ("circle" -> "triangle"):  M*_t <- M_t                 while t is among the first
                                                                       `cross_replace` of the steps
    re-weighting one word j by c:        M*_t[:, j] <- c M_t[:, j]   (section 3.2, "attention re-weighting")

The values V still come from the edited prompt, so the pixels that read "circle" in the
source now read "triangle", in the same places. Their released code (google/prompt-to-prompt,
`prompt-to-prompt_stable.ipynb`, `AttentionReplace`, `AttentionReweight`, with
`cross_replace_steps=0.8` and `self_replace_steps=0.4` in its examples) also injects the
source's *self*-attention maps for the first `self_replace` of the steps, in the layers at a
quarter of the latent's side or coarser (16 x 16 of SD 1.x's 64 x 64), and edits only the
conditional half of the classifier-free batch, as here.

SDXL adds one path the paper's model did not have: the pooled text embedding enters through
`y`, the UNet's global conditioning vector, untouched by any attention map. The edited run
keeps its own pooled embedding, so the new word also reaches every pixel that way.

    source, edited = prompt_to_prompt(pipe, "a red circle", "a red square", seed=0)

The two prompts must have the same number of tokens (a word swapped for a word); the paper's
refinement edits, which align prompts of different lengths, are not implemented here.
"""

from dataclasses import dataclass

import torch

from ..inspection.capture import token_positions
from ..model.attention import Attention


@dataclass
class AttentionInjection:
    """The edits attached to every attention layer during one side-by-side generation.

    The conditional half of the batch holds `pairs` source rows, then `pairs` edited rows;
    edited row k receives source row k's maps. `weights` maps token positions of the edited
    prompt to their factor c. Steps are counted by the UNet's calls (one per step).
    """

    pairs: int
    cross_steps: int
    self_steps: int
    weights: dict[int, float]
    latent_pixels: int
    step: int = -1

    def attach(self, unet) -> list:
        """Put the edit on every attention layer; returns what `detach` needs to undo it."""
        layers = [m for m in unet.modules() if isinstance(m, Attention)]
        for layer in layers:
            layer.edit = self.edit
        hook = unet.register_forward_pre_hook(self._next_step)
        return [layers, hook]

    @staticmethod
    def detach(attached: list) -> None:
        layers, hook = attached
        for layer in layers:
            layer.edit = None
        hook.remove()

    def _next_step(self, module, args) -> None:
        self.step += 1

    def edit(self, module: Attention, probs: torch.Tensor) -> torch.Tensor:
        """probs (batch, heads, pixels, keys) -> the maps the layer uses."""
        n = self.pairs
        source = probs[-2 * n:-n]
        if module.is_cross_attention:
            if self.step >= self.cross_steps:
                return probs
            new = source.clone()
            for position, c in self.weights.items():
                new[..., position] *= c
        else:
            coarse = probs.shape[2] * 16 <= self.latent_pixels  # a quarter of the side, or less
            if self.step >= self.self_steps or not coarse:
                return probs
            new = source
        probs = probs.clone()
        probs[-n:] = new
        return probs


def prompt_to_prompt(pipe, source: str | list[str], target: str | list[str], *, seed: int, images: int = 1,
                     cross_replace: float = 0.8, self_replace: float = 0.4, reweight: dict[str, float] | None = None,
                     num_inference_steps: int = 20, **kwargs):
    """Generate `source` and its edit `target` from the same noise, the edit reading the
    source's attention maps for its first steps; returns (source output, edited output).

    `source` and `target` are prompts or equally long lists of them (target k edits source
    k), with `images` pictures of each. The noise is what `pipe(source, seed=seed,
    num_images_per_prompt=images)` draws, so the source pictures are the plain pipeline's.
    `cross_replace` and `self_replace` are the fractions of the steps whose cross- and
    self-attention maps are injected (0 and 0 give the targets as the plain pipeline draws
    them from the same noise); `reweight` maps words of the target prompts to their factor c,
    applied to the injected maps, so during the first `cross_replace` of the steps only (as in
    Hertz et al.'s code; with cross_replace=0 it does nothing). Other keyword arguments go to
    the text-to-image pipeline (not `image`, `denoising_start` or `num_images_per_prompt`: the
    steps are counted from pure noise, and `images` sets the pictures per prompt).

    >>> from sdxl_edu import load_pipeline
    >>> pipe = load_pipeline()
    >>> src, edit = prompt_to_prompt(pipe, "a red circle", "a red square", seed=0, num_inference_steps=4,
    ...                              output_type="latent", progress=False)
    >>> plain = pipe("a red circle", seed=0, num_inference_steps=4, output_type="latent", progress=False)
    >>> torch.allclose(src.images, plain.images, atol=1e-4)  # the source is the plain picture
    True
    >>> prompt_to_prompt(pipe, "a red circle", "a large red circle", seed=0)
    Traceback (most recent call last):
    ...
    ValueError: prompt-to-prompt swaps a word for a word: 'a red circle' has 5 tokens, 'a large red circle' 6 ...
    """
    sources, targets = ([p] if isinstance(p, str) else list(p) for p in (source, target))
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} source prompts and {len(targets)} targets: give one target per source")
    tokenizer = pipe.tokenizer_2
    for s, t in zip(sources, targets):
        lengths = [len(tokenizer(p)["input_ids"]) for p in (s, t)]
        if lengths[0] != lengths[1]:
            raise ValueError(f"prompt-to-prompt swaps a word for a word: {s!r} has {lengths[0]} tokens, {t!r} "
                             f"{lengths[1]} (with the start and end tokens); use prompts whose tokens align one to one")
    if "latents" in kwargs:
        raise ValueError("prompt_to_prompt draws its noise from `seed`; pass seed=, not latents=")
    for name in ("image", "mask_image", "denoising_start", "num_images_per_prompt"):
        if kwargs.get(name) is not None:
            raise ValueError(f"prompt_to_prompt runs text-to-image from pure noise and counts its steps from there; "
                             f"{name}= is not supported (for several pictures per prompt pass images=)")
    size = (kwargs.get("height") or pipe.default_size, kwargs.get("width") or pipe.default_size)
    latent_size = [s // pipe.vae_scale_factor for s in size]
    pairs = len(sources) * images
    noise = torch.randn((pairs, pipe.unet_config.in_channels, *latent_size),
                        generator=torch.Generator("cpu").manual_seed(seed))
    weights = [{p: c for word, c in (reweight or {}).items() for p in token_positions(tokenizer, t, word)}
               for t in targets]
    if len({tuple(w.items()) for w in weights}) > 1:
        raise ValueError(f"the re-weighted words {sorted(reweight)} sit at different token positions in the targets; "
                         "run targets that differ in where they are separately")
    injection = AttentionInjection(pairs=pairs, cross_steps=round(cross_replace * num_inference_steps),
                                   self_steps=round(self_replace * num_inference_steps), weights=weights[0],
                                   latent_pixels=latent_size[0] * latent_size[1])
    rows = [p for p in sources + targets for _ in range(images)]
    attached = injection.attach(pipe.unet)
    try:
        out = pipe(rows, latents=torch.cat([noise, noise]), num_inference_steps=num_inference_steps, **kwargs)
    finally:
        injection.detach(attached)
    return _half(out, slice(0, pairs)), _half(out, slice(pairs, 2 * pairs))


def _half(out, rows: slice):
    """One prompt's rows of a pipeline output."""
    steps = None if out.steps is None else [_step_rows(step, rows) for step in out.steps]
    return type(out)(out.images[rows], out.latents[rows], steps)


def _step_rows(step, rows: slice):
    return type(step)(**{name: value[rows] if torch.is_tensor(value) and value.dim() > 0 else value
                         for name, value in vars(step).items()})
