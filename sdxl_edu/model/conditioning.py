"""Everything the UNet is told besides the noisy latent: the context and the vector y.

SDXL's conditioner (sgm `GeneralConditioner`) routes each input by the rank of what it
produces: token sequences become the cross-attention `context`, vectors are concatenated
into `y`, which is added to the timestep embedding.

    context (B, 77, 2048) = [CLIP-L hidden_states[-2] (768) | bigG hidden_states[-2] (1280)]
    y       (B, 2816)     = [pooled bigG (1280) | emb(orig_h) | emb(orig_w) | emb(crop_top)
                             | emb(crop_left) | emb(target_h) | emb(target_w)]

each `emb` being the 256-dimensional sinusoidal embedding of one number (in pixels):
1280 + 6 x 256 = 2816. The refiner reads bigG alone (context 1280) and replaces the target
size by an aesthetic score: 1280 + 5 x 256 = 2560.

*Micro-conditioning* (SDXL paper, section 2.2) is what these numbers are for: the model
is told how large the original image was (so small, upscaled images can be kept for
training without teaching blur: ask for a large original size at inference), where the
training crop started (ask for (0, 0) to get a centred, uncut object), and at which
aspect-ratio bucket it is generating.

The unconditional branch of classifier-free guidance has three choices, all explicit in
`Conditioner.encode_prompt`:
- zeros for both the context and the pooled vector: what the official sgm code does for
  SDXL, and what diffusers does for the base when no negative prompt is given
  (`force_zeros_for_empty_prompt`);
- the empty prompt `""`, encoded like any prompt (SD 1.x's choice; the refiner's default);
- a negative prompt, encoded in its place.

Upstream, at pinned commits: sgm's `GeneralConditioner`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/encoders/modules.py#L71),
diffusers' `encode_prompt`
(https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py#L283),
`_get_add_time_ids`
(https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py#L729).
"""

from typing import NamedTuple

import torch
from torch import nn

from .text import clip_skip_layer, text_hidden_states, tokenize
from .unet import timestep_embedding

MICRO_EMBED_DIM = 256  # width of each micro-conditioning number's sinusoidal embedding


class PromptEmbeddings(NamedTuple):
    """The text half of the conditioning, for both branches of classifier-free guidance.

    The order is diffusers' `encode_prompt` return order, so both unpack the same way.
    """

    context: torch.Tensor  # (B, 77, C): diffusers' prompt_embeds
    negative_context: torch.Tensor | None  # None when no guidance is asked for
    pooled: torch.Tensor  # (B, P): diffusers' pooled_prompt_embeds
    negative_pooled: torch.Tensor | None


def micro_conditioning_ids(original_size: tuple[int, int], crops_coords_top_left: tuple[int, int],
                           target_size: tuple[int, int] | None = None,
                           aesthetic_score: float | None = None) -> torch.Tensor:
    """The micro-conditioning numbers in the order the UNet was trained with: height
    before width, then the crop's top and left, then the target size (base) or the
    aesthetic score (refiner). diffusers calls these `add_time_ids`.

    >>> micro_conditioning_ids((1024, 768), (0, 0), target_size=(1024, 1024))
    tensor([1024.,  768.,    0.,    0., 1024., 1024.])
    >>> micro_conditioning_ids((1024, 1024), (0, 0), aesthetic_score=6.0)
    tensor([1024., 1024.,    0.,    0.,    6.])
    """
    if (target_size is None) == (aesthetic_score is None):
        raise ValueError("give exactly one of target_size (SDXL base) or aesthetic_score (refiner)")
    last = tuple(target_size) if target_size is not None else (aesthetic_score,)
    return torch.tensor([*original_size, *crops_coords_top_left, *last], dtype=torch.float32)


def vector_y(pooled: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """y = [pooled | emb(id_1) | ... | emb(id_n)], each id embedded in 256 dimensions.

    `ids` is (n,) for the whole batch or (B, n) per sample.

    >>> y = vector_y(torch.zeros(2, 1280), micro_conditioning_ids((1024, 1024), (0, 0), (1024, 1024)))
    >>> y.shape  # 1280 + 6 * 256
    torch.Size([2, 2816])
    """
    ids = ids.to(pooled.device).expand(pooled.shape[0], -1)
    emb = timestep_embedding(ids.flatten(), MICRO_EMBED_DIM).view(pooled.shape[0], -1)
    return torch.cat([pooled, emb.to(pooled.dtype)], dim=-1)


def micro_conditioning_per_branch(refiner: bool, height: int, width: int, original_size: tuple[int, int] | None = None,
                                  crops_coords_top_left: tuple[int, int] = (0, 0),
                                  target_size: tuple[int, int] | None = None, aesthetic_score: float = 6.0,
                                  negative_original_size: tuple[int, int] | None = None,
                                  negative_crops_coords_top_left: tuple[int, int] | None = None,
                                  negative_target_size: tuple[int, int] | None = None,
                                  negative_aesthetic_score: float = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-conditioning numbers of the conditional and the unconditional branch, with
    diffusers' defaults: the original and target sizes are the image's (height, width); the
    negative branch's sizes are the prompt's, and so is its crop, except on the refiner,
    where it is (0, 0) as in diffusers. (diffusers' base pipeline switches its negative crop
    to (0, 0) once negative sizes are given: pass negative_crops_coords_top_left to
    reproduce that.)

    >>> ids, negative_ids = micro_conditioning_per_branch(False, 64, 48, crops_coords_top_left=(4, 8))
    >>> ids.tolist(), negative_ids.tolist()
    ([64.0, 48.0, 4.0, 8.0, 64.0, 48.0], [64.0, 48.0, 4.0, 8.0, 64.0, 48.0])
    >>> micro_conditioning_per_branch(True, 64, 64, crops_coords_top_left=(4, 8))[1].tolist()
    [64.0, 64.0, 0.0, 0.0, 2.5]
    """
    original_size, target_size = original_size or (height, width), target_size or (height, width)
    negative_crops = negative_crops_coords_top_left or ((0, 0) if refiner else crops_coords_top_left)
    negative_original_size = negative_original_size or original_size
    negative_target_size = negative_target_size or target_size
    if refiner:
        return (micro_conditioning_ids(original_size, crops_coords_top_left, aesthetic_score=aesthetic_score),
                micro_conditioning_ids(negative_original_size, negative_crops,
                                       aesthetic_score=negative_aesthetic_score))
    return (micro_conditioning_ids(original_size, crops_coords_top_left, target_size=target_size),
            micro_conditioning_ids(negative_original_size, negative_crops, target_size=negative_target_size))


def unet_conditioning(text: PromptEmbeddings, ids: torch.Tensor, negative_ids: torch.Tensor, images_per_prompt: int,
                      classifier_free: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's context and y for a whole generation: each prompt's embeddings repeated
    for its images, y built per branch, and under classifier-free guidance the
    unconditional branch first, [uncond; cond], the order `guidance.guided_eps` splits.

    >>> text = PromptEmbeddings(torch.ones(2, 77, 8), torch.zeros(2, 77, 8), torch.ones(2, 4), torch.zeros(2, 4))
    >>> ids = micro_conditioning_ids((64, 64), (0, 0), target_size=(64, 64))
    >>> context, y = unet_conditioning(text, ids, ids, images_per_prompt=3, classifier_free=True)
    >>> context.shape, y.shape, context[:6].abs().max().item()  # 2 x 3 unconditional, then 2 x 3 conditional
    (torch.Size([12, 77, 8]), torch.Size([12, 1540]), 0.0)
    """
    context, y = _branch(text.context, text.pooled, ids, images_per_prompt)
    if not classifier_free:
        return context, y
    negative_context, negative_y = _branch(text.negative_context, text.negative_pooled, negative_ids,
                                           images_per_prompt)
    return torch.cat([negative_context, context]), torch.cat([negative_y, y])


def _branch(context: torch.Tensor, pooled: torch.Tensor, ids: torch.Tensor, repeats: int):
    """One guidance branch: its embeddings repeated per image, and its y."""
    context, pooled = context.repeat_interleave(repeats, 0), pooled.repeat_interleave(repeats, 0)
    return context, vector_y(pooled, ids)


class Conditioner(nn.Module):
    """The text side of SDXL: tokenizers, encoders and the context/pooled recipe.

    The base has both encoders; the refiner has only bigG (`text_encoder=None`), and so has
    Stable Diffusion 2.x (its OpenCLIP ViT-H in the same slot), which reads the penultimate
    layer *through* the final LayerNorm (`final_layer_norm=True`; SDXL reads it without).
    diffusers' SD 2.x folders ship that encoder without its last layer, which SD 2.x never
    reads (`layers_removed=1`): the penultimate layer is then the encoder's last.

    >>> from sdxl_edu.testing import toy_parts
    >>> p = toy_parts("base")
    >>> conditioner = Conditioner(p["tokenizer"], p["text_encoder"], p["tokenizer_2"], p["text_encoder_2"])
    >>> text = conditioner.encode_prompt(["a red circle", "a cat"])  # no negative prompt: zeros
    >>> text.context.shape, text.negative_context.abs().max().item()
    (torch.Size([2, 77, 48]), 0.0)
    """

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2,
                 force_zeros_for_empty_prompt: bool = True, final_layer_norm: bool = False, layers_removed: int = 0):
        super().__init__()
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.final_layer_norm, self.layers_removed = final_layer_norm, layers_removed

    @property
    def encoders(self) -> list[tuple]:
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        return [(tok, enc) for tok, enc in pairs if enc is not None]

    @torch.no_grad()
    def encode_text(self, prompts: list[str], clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (penultimate layers, or earlier with clip_skip, concatenated) and pooled."""
        layer = clip_skip_layer(clip_skip) + self.layers_removed
        contexts, pooled = [], None
        for tokenizer, encoder in self.encoders:
            hidden_states, pooled = text_hidden_states(encoder, tokenize(tokenizer, prompts))
            context = hidden_states[layer]
            if self.final_layer_norm:  # transformers 5's CLIPTextModel holds its layers itself, not in .text_model
                context = getattr(encoder, "text_model", encoder).final_layer_norm(context)
            contexts.append(context)
        return torch.cat(contexts, dim=-1), pooled  # pooled: the last encoder's (bigG)

    def encode_prompt(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                      clip_skip: int | None = None, do_classifier_free_guidance: bool = True,
                      force_zeros: bool | None = None) -> PromptEmbeddings:
        """Encode the prompt, and the unconditional branch when guidance needs it.

        - `negative_prompt=None`: zeros if `force_zeros_for_empty_prompt` (the base's
          default, as in diffusers), else the empty prompt;
        - `negative_prompt=""` or any text: that text, encoded;
        - `force_zeros=True`: zeros whatever the negative prompt (the official sgm code).

        `clip_skip` applies to both branches (diffusers applies it to the prompt only).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        context, pooled = self.encode_text(prompts, clip_skip)
        if not do_classifier_free_guidance:
            return PromptEmbeddings(context, None, pooled, None)
        if force_zeros is None:
            force_zeros = negative_prompt is None and self.force_zeros_for_empty_prompt
        if force_zeros:
            return PromptEmbeddings(context, torch.zeros_like(context), pooled, torch.zeros_like(pooled))
        negatives = _as_batch(negative_prompt or "", len(prompts))
        negative_context, negative_pooled = self.encode_text(negatives, clip_skip)
        return PromptEmbeddings(context, negative_context, pooled, negative_pooled)


def _as_batch(texts: str | list[str], batch_size: int) -> list[str]:
    if isinstance(texts, str):
        return [texts] * batch_size
    if len(texts) != batch_size:
        raise ValueError(f"negative_prompt has {len(texts)} entries but prompt has {batch_size}; "
                         "give one negative prompt per prompt, or a single string for all")
    return list(texts)
