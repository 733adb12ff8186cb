"""Checkers for the lessons' exercises: each says right or wrong, and why.

A checker takes the learner's answer (a number, a word, or a function to test) and computes
the truth on the spot, from the code or the model the lesson runs, never from a stored
answer. It returns a `Verdict`, which a notebook shows as one line:

>>> unet_rows(None)
… Not answered yet: replace None with your answer and run the cell again.
>>> classifier_free_guidance_rule(lambda eps_u, eps_c, w: eps_c)
✗ Not quite: with w = 0.0 your function gives eps_cond, but guidance moves past it: eps_uncond + w (eps_cond - eps_uncond).

Lessons 1 to 11's checkers are in `sdxl.py` (SDXL's own parts), lesson 12's in `family.py` (the
Stable Diffusion family), lesson 13's in `variations.py` (Stable unCLIP), lesson 14's in
`training.py` (the training objective), lesson 15's in `composition.py` (attention control);
`verdict.py` holds what they return. Solutions are in
`lessons/solutions.py`.
"""

from .composition import causal_reach, injection_rule, reweight_rule
from .family import busiest_level, context_width, native_latent_side
from .sdxl import (
    unet_rows, latent_shape_rule, refiner_context_width, q_sample_rule, sigma_rule,
    terminal_signal, classifier_free_guidance_rule, guidance_cost, negative_at_scale_one,
    zeros_vs_empty, clip_skip_layer_number, context_split, transformer_blocks,
    attention_scores_size, y_width, micro_ids_rule, handoff_steps, img2img_steps,
    similarity_trend, unscaled_std, latent_compression, ancestral_step,
    euler_loop_rule)
from .training import caption_dropout_rule, denoising_loss_rule, v_loss_at_init
from .variations import embedding_noise_rule, unclip_y_width
from .verdict import NOT_YET, Verdict

__all__ = [
    "NOT_YET", "Verdict", "ancestral_step", "attention_scores_size", "busiest_level", "caption_dropout_rule", "causal_reach",
    "classifier_free_guidance_rule", "clip_skip_layer_number", "context_split", "context_width", "denoising_loss_rule",
    "embedding_noise_rule", "euler_loop_rule", "guidance_cost", "handoff_steps",
    "img2img_steps", "injection_rule", "latent_compression", "latent_shape_rule", "micro_ids_rule", "native_latent_side",
    "negative_at_scale_one", "q_sample_rule", "refiner_context_width", "reweight_rule", "sigma_rule",
    "similarity_trend", "terminal_signal", "transformer_blocks", "unclip_y_width", "unscaled_std",
    "unet_rows", "v_loss_at_init", "y_width", "zeros_vs_empty"]
