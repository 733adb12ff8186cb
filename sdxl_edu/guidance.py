"""Guidance: steering each denoising step towards the prompt.

**Classifier-free guidance** (Ho & Salimans 2022). Training drops the caption some of the
time (SDXL: the text embeddings are zeroed), so one UNet predicts the noise both with the
prompt, eps_c, and without it, eps_u. At sampling time we extrapolate from one to the other:

    eps = eps_u + s (eps_c - eps_u)

Written as `w * eps_c + (1 - w) * eps_u` (the form in many notes) it is the same line with
w = s: s = 1 is the conditional prediction alone (one UNet pass suffices), s = 0 ignores the
prompt, s > 1 goes past the conditional prediction, away from the unconditional one. A
*negative prompt* is nothing but a different eps_u: the branch we move away from.

**Guidance rescale** (Lin et al. 2023, section 3.4): large s inflates the prediction's
standard deviation (over-exposed, saturated images); rescale it back towards eps_c's:

    eps_rescaled = eps * std(eps_c) / std(eps);   eps' = phi eps_rescaled + (1 - phi) eps

**Classifier guidance** (Dhariwal & Nichol 2021, section 4): a classifier p(y | x_t, t)
trained on noisy latents supplies the direction that makes class y more likely. Since
eps_hat = -sqrt(1 - ab) grad log p(x_t), adding log p(y | x_t) to the model's log density
shifts the noise prediction:

    eps' = eps - s sqrt(1 - ab_t) grad_{x_t} log p(y | x_t)

It needs a separate classifier, trained on noise, and a backward pass through it per step.

>>> import torch
>>> eps_u, eps_c = torch.zeros(3), torch.ones(3)
>>> classifier_free_guidance(eps_u, eps_c, 1.0).tolist()  # s = 1: the conditional prediction
[1.0, 1.0, 1.0]
>>> classifier_free_guidance(eps_u, eps_c, 0.0).tolist()  # s = 0: the unconditional one
[0.0, 0.0, 0.0]
>>> w = 7.5; torch.allclose(classifier_free_guidance(eps_u, eps_c, w), w * eps_c + (1 - w) * eps_u)
True
"""

from collections.abc import Callable

import torch

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | dict[str, torch.Tensor]]


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def rescale_guidance(eps: torch.Tensor, eps_cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Blend eps with a copy rescaled to eps_cond's per-sample standard deviation.

    >>> eps_c = torch.randn(2, 4, 8, 8)
    >>> rescaled = rescale_guidance(10 * eps_c, eps_c, 1.0)
    >>> torch.allclose(rescaled.std(), eps_c.std(), atol=1e-5)
    True
    """
    dims = list(range(1, eps.ndim))
    rescaled = eps * (eps_cond.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1 - guidance_rescale) * eps


def classifier_log_prob(classifier: Classifier, x_t: torch.Tensor, t: torch.Tensor,
                        labels: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(y | x_t) per sample. The classifier returns logits (B, K) and `labels` is (B,),
    or it returns one logits tensor per attribute and `labels` is a dict of the same keys
    (then log p is the sum over attributes, each treated as independent).

    >>> clf = lambda x, t: {"colour": torch.zeros(1, 5), "shape": torch.zeros(1, 3)}
    >>> classifier_log_prob(clf, None, None, {"colour": torch.tensor([0]), "shape": torch.tensor([2])})
    tensor([-2.7081])
    """
    logits = classifier(x_t, t)
    if isinstance(logits, dict):
        return sum(_log_prob(logits[k], labels[k]) for k in labels)
    return _log_prob(logits, labels)


def _log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.log_softmax(-1).gather(-1, labels.to(logits.device)[:, None])[:, 0]


def classifier_gradient(classifier: Classifier, x_t: torch.Tensor, t: torch.Tensor,
                        labels: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """grad_{x_t} log p(y | x_t): one forward and one backward pass through the classifier."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        return torch.autograd.grad(classifier_log_prob(classifier, x, t, labels).sum(), x)[0]


def classifier_guidance(eps: torch.Tensor, gradient: torch.Tensor, sqrt_one_minus_alpha_bar: float | torch.Tensor,
                        scale: float) -> torch.Tensor:
    """eps - s sqrt(1 - ab_t) grad log p(y | x_t).

    >>> classifier_guidance(torch.zeros(2), torch.ones(2), 0.5, 2.0).tolist()
    [-1.0, -1.0]
    """
    return eps - scale * sqrt_one_minus_alpha_bar * gradient
