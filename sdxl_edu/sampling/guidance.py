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

`guided_eps` puts the three together for one step of a sampler; `Guidance` holds what
`pipe(...)` was asked for.

Upstream, at pinned commits: sgm's `VanillaCFG`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/diffusionmodules/guiders.py#L24),
diffusers' `rescale_noise_cfg`
(https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py#L84).

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
from dataclasses import dataclass

import torch

from .samplers import Prediction

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
    """log p(y | x_t) per sample, for three kinds of classifier:

    - one class per picture: logits (B, K), `labels` the class indices (B,); log softmax;
    - one class per attribute: a dict of logits, `labels` a dict of indices with the same
      keys; log p is the sum over attributes, each treated as independent;
    - several classes present at once (multi-label, e.g. one logit per (shape, colour) pair
      of a scene): `labels` a float 0/1 tensor of the logits' shape marking the classes
      wanted, and log p(every wanted class present) = sum_k y_k log sigmoid(logit_k), each
      class's presence independent. Classes not wanted are left free, not pushed away.

    >>> clf = lambda x, t: {"colour": torch.zeros(1, 5), "shape": torch.zeros(1, 3)}
    >>> classifier_log_prob(clf, None, None, {"colour": torch.tensor([0]), "shape": torch.tensor([2])})
    tensor([-2.7081])
    >>> multi = lambda x, t: torch.tensor([[[0.0, 2.0], [-1.0, 5.0]]])  # (B, shapes, colours)
    >>> wanted = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # two objects: (0, 0) and (1, 0)
    >>> torch.allclose(classifier_log_prob(multi, None, None, wanted),
    ...                torch.sigmoid(torch.tensor(0.0)).log() + torch.sigmoid(torch.tensor(-1.0)).log())
    True
    """
    logits = classifier(x_t, t)
    if isinstance(logits, dict):
        return sum(_log_prob(logits[k], labels[k]) for k in labels)
    if labels.is_floating_point():
        wanted = labels.to(logits.device)
        return (wanted * torch.nn.functional.logsigmoid(logits)).flatten(1).sum(1)
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


@dataclass(frozen=True)
class Guidance:
    """How each step is steered: `pipe(...)`'s guidance arguments, together."""

    scale: float = 5.0  # guidance_scale, s
    rescale: float = 0.0  # guidance_rescale, phi
    classifier: Classifier | None = None
    class_labels: torch.Tensor | dict[str, torch.Tensor] | None = None
    classifier_scale: float = 1.0

    @property
    def classifier_free(self) -> bool:
        """Whether each step needs both branches: s = 1 is the conditional prediction alone."""
        return self.scale != 1.0


def guided_eps(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: torch.Tensor,
               t: torch.Tensor, guidance: Guidance, to_eps: Callable) -> Prediction:
    """One step's steered noise prediction, for a sampler at state x (the sigma view):

        x_t          = x / sqrt(sigma^2 + 1)                  the UNet's input
        out_u, out_c = model([x_t; x_t], t)                   both branches in one batch
        out          = out_u + s (out_c - out_u), rescaled by phi
        eps          = to_eps(out) - s' sqrt(1 - ab_t) grad log p(y | x_t)

    Guidance and its rescale act on the model's own output (v for a v-prediction model),
    as in diffusers; `to_eps(out, x, sigma)` (`NoiseSchedule.to_eps`) converts afterwards,
    in float32 whatever the UNet's dtype.

    >>> model = lambda x_t, t: torch.tensor([[0.0], [1.0]])  # the UNet's two branches: eps_u = 0, eps_c = 1
    >>> p = guided_eps(model, torch.zeros(1, 1), torch.tensor(1.0), torch.tensor(500.0), Guidance(scale=3.0),
    ...                lambda out, x, sigma: out)
    >>> p.eps_uncond.item(), p.eps_cond.item(), p.eps.item()  # 0 + 3 (1 - 0)
    (0.0, 1.0, 3.0)
    """
    x_t = x / (sigma**2 + 1) ** 0.5
    if guidance.classifier_free:
        out_u, out_c = model(torch.cat([x_t, x_t]), t).chunk(2)
        eps_uncond, eps_cond = to_eps(out_u.float(), x, sigma), to_eps(out_c.float(), x, sigma)
        out = classifier_free_guidance(out_u, out_c, guidance.scale)
        if guidance.rescale > 0:
            out = rescale_guidance(out, out_c, guidance.rescale)
    else:
        out, eps_uncond, eps_cond = model(x_t, t), None, None
    eps = to_eps(out.float(), x, sigma)
    if guidance.classifier is not None:
        grad = classifier_gradient(guidance.classifier, x_t, t.expand(x.shape[0]).to(x.device), guidance.class_labels)
        eps = classifier_guidance(eps, grad, sigma / (sigma**2 + 1) ** 0.5, guidance.classifier_scale)
    return Prediction(eps, eps_cond, eps_uncond)
