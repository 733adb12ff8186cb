"""Checkers for lesson 13, image variations (Stable unCLIP): every truth computed on the spot
from `sdxl_edu.model.unclip`, never stored."""

import torch

from ...model.unclip import CLIPEmbeddingNoiseAugmentation
from .verdict import NOT_YET, Verdict, close


def unclip_y_width(answer, embedding_dim: int = 1024) -> Verdict:
    """The width of unCLIP's vector y for an image embedding `embedding_dim` wide: the noised
    embedding and the sinusoidal embedding of its noise level, side by side.

    >>> unclip_y_width(2048).ok, unclip_y_width(1024).ok, unclip_y_width(1536, 768).ok
    (True, False, True)
    """
    if answer is None:
        return NOT_YET
    augment = CLIPEmbeddingNoiseAugmentation(embedding_dim)
    truth = augment(torch.zeros(1, embedding_dim), 0, torch.zeros(1, embedding_dim)).shape[-1]
    if answer == truth:
        return Verdict(True, f"{truth}: the noised embedding ({embedding_dim}) and the noise level's embedding "
                             f"({truth - embedding_dim}), as the released config's adm_in_channels says.")
    return Verdict(False, "y holds two things side by side: the (noised) image embedding, and an embedding of "
                          "how noisy it is, as wide as the image embedding.")


def embedding_noise_rule(fn, dim: int = 8) -> Verdict:
    """`fn(e, level, noise, alpha_bar)` should noise an image embedding as unCLIP does (its
    statistics taken as mean 0 and std 1): the forward process of lesson 2 on a vector.

    >>> embedding_noise_rule(lambda e, level, noise, ab: ab[level].sqrt() * e + (1 - ab[level]).sqrt() * noise).ok
    True
    >>> embedding_noise_rule(lambda e, level, noise, ab: e + noise * level / 1000).ok
    False
    """
    if fn is None:
        return NOT_YET
    augment = CLIPEmbeddingNoiseAugmentation(dim)
    generator = torch.Generator().manual_seed(0)
    e, noise = torch.randn(3, dim, generator=generator), torch.randn(3, dim, generator=generator)
    alpha_bar = augment.schedule.alphas_cumprod
    for level in (0, 250, 999):
        truth, got = augment(e, level, noise)[:, :dim], fn(e, level, noise, alpha_bar)
        if got is None:  # the template's body, not written yet
            return NOT_YET
        if tuple(got.shape) != tuple(truth.shape) or not close(got, truth):
            return Verdict(False, f"at noise level {level} your embedding differs from unCLIP's. It is q_sample: "
                                  "sqrt(alpha_bar[level]) e + sqrt(1 - alpha_bar[level]) noise, on the "
                                  "squared-cosine schedule's alpha_bar.")
    return Verdict(True, "the embedding is noised exactly as the latents are, on a schedule of its own.")
