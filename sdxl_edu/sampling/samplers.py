"""Samplers: walk from noise to a clean latent, one UNet call per step.

All samplers here share one signature (k-diffusion's, Crowson 2022):

    x = sampler(denoise, x, plan, callback=None, generator=None, eta=0.0, progress=False, after_step=None)

- `denoise(x, sigma, t) -> eps` is the model's noise prediction (built by the pipeline from
  the UNet and `sdxl_edu.sampling.guidance`; a sampler knows nothing of text). It may instead return
  a `Prediction`, which also carries the two classifier-free guidance branches for the
  step record;
- `x` is the latent in the "sigma" view of `sdxl_edu.sampling.schedule`: x = x_0 + sigma eps, so the
  model's estimate of the clean latent is simply x0_hat = x - sigma eps_hat;
- `plan` holds the timesteps and sigmas to visit (`make_plan`);
- `callback(step)` sees every step: index, t, sigma, x, the UNet's input x_t, eps_hat,
  x0_hat and the guidance branches (a `Step`); `after_step(x, i) -> x`, if given, may change
  the state after a step;
- `eta` is DDIM's amount of fresh noise; the others fix their own (none for Euler and
  DPM++ 2M, all of it for Euler ancestral and DDPM) and ignore it, so that one call
  serves every sampler.

Written this way, the classic samplers turn out to be a few lines each, and close kin:

    Euler (Karras et al. 2022, Algorithm 2, no churn):      x' = x0_hat + sigma' eps_hat
    DDIM, eta = 0 (Song et al. 2021):                        the same update: Euler on the ODE
    DDIM, eta > 0 / Euler ancestral / DDPM:                  go down to sigma_down < sigma', then
                                                             add fresh noise of size sigma_up
    DPM++ 2M (Lu et al. 2022):                               Euler in log-sigma, with x0_hat
                                                             extrapolated from the last two steps

They differ in *which* sigmas they visit, which follows diffusers' scheduler of the same
name exactly (`make_plan`), so a run here ends where the diffusers loop ends.

Upstream, at pinned commits: k-diffusion's `sample_euler`
(https://github.com/crowsonkb/k-diffusion/blob/4601bf085320592473f681a62808ed873d17fad5/k_diffusion/sampling.py#L118),
`sample_euler_ancestral`
(https://github.com/crowsonkb/k-diffusion/blob/4601bf085320592473f681a62808ed873d17fad5/k_diffusion/sampling.py#L139),
`sample_dpmpp_2m`
(https://github.com/crowsonkb/k-diffusion/blob/4601bf085320592473f681a62808ed873d17fad5/k_diffusion/sampling.py#L585),
`get_sigmas_karras`
(https://github.com/crowsonkb/k-diffusion/blob/4601bf085320592473f681a62808ed873d17fad5/k_diffusion/sampling.py#L17).

>>> import torch
>>> from sdxl_edu.sampling.schedule import NoiseSchedule
>>> plan = make_plan(NoiseSchedule(), "euler", 4)
>>> plan.timesteps.tolist(), [round(s, 3) for s in plan.sigmas.tolist()]
([751.0, 501.0, 251.0, 1.0], [4.117, 1.624, 0.698, 0.041, 0.0])
>>> x0 = torch.ones(1, 4, 2, 2)       # a "model" that knows the answer: eps = (x - x0) / sigma
>>> out = euler(lambda x, sigma, t: (x - x0) / sigma, plan.init_noise_sigma * torch.randn(1, 4, 2, 2), plan)
>>> torch.allclose(out, x0)
True
>>> [torch.allclose(f(lambda x, sigma, t: (x - x0) / sigma, torch.randn(1, 4, 2, 2), plan, eta=0.0), x0, atol=1e-5)
...  for f in SAMPLERS.values()]  # one call for every sampler
[True, True, True, True, True]
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .schedule import NoiseSchedule, karras_sigmas



class Prediction(NamedTuple):
    """What a denoiser may return instead of a bare eps: eps after guidance and, under
    classifier-free guidance, the two branches it was made from (for the step record)."""

    eps: torch.Tensor
    eps_cond: torch.Tensor | None = None
    eps_uncond: torch.Tensor | None = None


Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | Prediction]


@dataclass
class Plan:
    """The grid a sampler walks: UNet timestep and sigma at each step, and the sigma after
    the last one (0 for a full run).

    `space` is how diffusers' scheduler of the same name stores latents, which matters only
    where latents leave or enter a run (the base -> refiner hand-off): "ve" for the Euler
    family (x = x0 + sigma eps), "vp" for DDIM, DDPM and DPM++ (x_t = x / sqrt(sigma^2 + 1)).
    """

    timesteps: torch.Tensor  # (n,)
    sigmas: torch.Tensor  # (n + 1,)
    init_noise_sigma: float  # the starting noise's std, in the sigma view
    space: str = "ve"

    def __len__(self) -> int:
        return len(self.timesteps)

    def __getitem__(self, steps: slice) -> "Plan":
        """A contiguous part of the run (img2img, the refiner hand-off). A part that starts
        where the run does keeps its starting noise (diffusers' `init_noise_sigma` does not
        depend on `denoising_end`)."""
        start, stop, _ = steps.indices(len(self))
        init = self.init_noise_sigma if start == 0 else float((self.sigmas[start] ** 2 + 1) ** 0.5)
        return Plan(self.timesteps[start:stop], self.sigmas[start:stop + 1], init, self.space)

    def to_sigma_view(self, latents: torch.Tensor, i: int = 0) -> torch.Tensor:
        """Latents as stored between runs -> the sampler's x at this plan's sigma i (the first
        by default; -1, the last, is where `from_sigma_view` reads, and undoes this).

        >>> plan = Plan(torch.tensor([999]), torch.tensor([2.0, 0.75]), 2.0, "vp")
        >>> plan.to_sigma_view(torch.ones(1)), plan.from_sigma_view(plan.to_sigma_view(torch.ones(1), -1))
        (tensor([2.2361]), tensor([1.]))
        """
        return latents * (self.sigmas[i] ** 2 + 1) ** 0.5 if self.space == "vp" else latents

    def from_sigma_view(self, x: torch.Tensor) -> torch.Tensor:
        """The sampler's x at this plan's last sigma -> latents as stored between runs."""
        return x / (self.sigmas[-1] ** 2 + 1) ** 0.5 if self.space == "vp" else x


def make_plan(schedule: NoiseSchedule, sampler: str, num_inference_steps: int,
              use_karras_sigmas: bool = False) -> Plan:
    """The timesteps and sigmas diffusers' scheduler of the same name visits."""
    n, T = num_inference_steps, schedule.num_train_timesteps
    if sampler in ("euler", "euler_ancestral"):
        t = schedule.timesteps(n)
        sigmas = torch.cat([schedule.sigma_at(t), torch.zeros(1)])
        # diffusers starts "leading" runs at sqrt(sigma^2 + 1) and the others at sigma
        init = (sigmas[0] ** 2 + 1) ** 0.5 if schedule.timestep_spacing == "leading" else sigmas[0]
        return Plan(t, sigmas, float(init), "ve")
    if sampler in ("ddim", "ddpm"):
        t = schedule.timesteps(n).round()  # these two visit integer timesteps only
        previous = t - T // n  # DDIM and DDPM step to t - 1000 // n
        # past t = 0, DDIM stops at alpha_bar_0 (SDXL's set_alpha_to_one=False), DDPM at sigma = 0
        last = schedule.sigmas[0].item() if sampler == "ddim" else 0.0
        sigmas = torch.where(previous >= 0, schedule.sigma_at(previous.clamp(min=0)), torch.tensor(last))
        sigmas = torch.cat([schedule.sigma_at(t[:1]), sigmas])
        return Plan(t, sigmas, float((sigmas[0] ** 2 + 1) ** 0.5), "vp")
    if sampler == "dpmpp_2m":
        if use_karras_sigmas:
            full = schedule.sigmas.numpy()
            s = karras_sigmas(full[0], full[-1], n)
            t = torch.from_numpy(schedule.t_at(s).round().astype(np.float32))
            sigmas = torch.from_numpy(s.astype(np.float32))
        else:
            t = _dpm_timesteps(schedule, n)
            sigmas = schedule.sigma_at(t)
        sigmas = torch.cat([sigmas, torch.zeros(1)])
        return Plan(t, sigmas, float((sigmas[0] ** 2 + 1) ** 0.5), "vp")
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")


def _dpm_timesteps(schedule: NoiseSchedule, n: int) -> torch.Tensor:
    """DPMSolverMultistepScheduler spaces its "leading" and "linspace" grids over n + 1
    points and drops the last (trailing is as for the other samplers)."""
    T = schedule.num_train_timesteps
    if schedule.timestep_spacing == "leading":
        t = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1] + schedule.steps_offset
    elif schedule.timestep_spacing == "linspace":
        t = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    else:
        return schedule.timesteps(n)
    return torch.from_numpy(t.astype(np.float32).copy())


@dataclass
class Step:
    """What a callback sees at each step (before the update)."""

    i: int  # step index in this run
    t: float  # UNet timestep
    sigma: float
    x: torch.Tensor  # sampler state, x0 + sigma eps
    x_t: torch.Tensor  # the UNet's input, x / sqrt(sigma^2 + 1) = sqrt(ab) x0 + sqrt(1 - ab) eps
    eps: torch.Tensor  # predicted noise (after guidance)
    x0: torch.Tensor  # predicted clean latent
    eps_cond: torch.Tensor | None = None  # the two classifier-free guidance branches,
    eps_uncond: torch.Tensor | None = None  # when the denoiser returns a Prediction

    def detached(self) -> "Step":
        """A copy to keep: every tensor detached and on the CPU.

        >>> step = Step(0, 1.0, 0.5, *[torch.zeros(1, requires_grad=True)] * 4)
        >>> step.detached().x.requires_grad, step.detached().eps_cond
        (False, None)
        """
        return Step(**{k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in self.__dict__.items()})


def _walk(plan: Plan, progress: bool):
    """(i, t, sigma, sigma_next) for each step, with a progress bar."""
    steps = zip(plan.timesteps.tolist(), plan.sigmas[:-1].tolist(), plan.sigmas[1:].tolist())
    return enumerate(tqdm(list(steps), disable=not progress, leave=False, desc="sampling"))


def _predict(denoise: Denoise, x: torch.Tensor, t: float, sigma: float, i: int, callback):
    """eps_hat and x0_hat = x - sigma eps_hat at one step, shown to the callback."""
    prediction = denoise(x, torch.tensor(sigma), torch.tensor(t))
    eps, eps_cond, eps_uncond = prediction if isinstance(prediction, Prediction) else (prediction, None, None)
    x0 = x - sigma * eps
    if callback is not None:
        callback(Step(i, t, sigma, x, x / math.sqrt(sigma**2 + 1), eps, x0, eps_cond, eps_uncond))
    return eps, x0


def euler(denoise: Denoise, x: torch.Tensor, plan: Plan, callback=None, generator=None, eta: float = 0.0,
          progress: bool = False, after_step=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = eps_hat(x, sigma).

        x_next = x + (sigma_next - sigma) eps_hat = x0_hat + sigma_next eps_hat

    SDXL's default sampler (the release's scheduler is EulerDiscreteScheduler).
    """
    for i, (t, sigma, sigma_next) in _walk(plan, progress):
        eps, x0 = _predict(denoise, x, t, sigma, i, callback)
        x = _after(x + (sigma_next - sigma) * eps, i, after_step)
    return x


def ddim(denoise: Denoise, x: torch.Tensor, plan: Plan, callback=None, generator=None, eta: float = 0.0,
         progress: bool = False, after_step=None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), written in the sigma view.

        sigma_up   = eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)
        x_next     = x0_hat + sqrt(sigma_next^2 - sigma_up^2) eps_hat + sigma_up z

    eta = 0 is deterministic and is exactly Euler's update; eta = 1 adds the most noise
    and is DDPM's ancestral step.

    >>> from sdxl_edu.sampling.schedule import NoiseSchedule
    >>> plan = make_plan(NoiseSchedule(), "euler", 5)
    >>> eps = lambda x, sigma, t: torch.tanh(x)  # any model will do
    >>> x = torch.randn(1, 4, 2, 2)
    >>> torch.allclose(ddim(eps, x, plan, eta=0.0), euler(eps, x, plan), atol=1e-5)
    True
    """
    for i, (t, sigma, sigma_next) in _walk(plan, progress):
        eps, x0 = _predict(denoise, x, t, sigma, i, callback)
        sigma_up = eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        x = x0 + math.sqrt(sigma_next**2 - sigma_up**2) * eps
        if sigma_up > 0:
            x = x + sigma_up * _noise(x, generator)
        x = _after(x, i, after_step)
    return x


def euler_ancestral(denoise: Denoise, x: torch.Tensor, plan: Plan, callback=None, generator=None,
                    eta: float = 0.0, progress: bool = False, after_step=None) -> torch.Tensor:
    """Euler down to sigma_down, then fresh noise up to sigma_next: DDIM with eta = 1 on
    Euler's grid. The fresh noise keeps the result changing with the step count."""
    return ddim(denoise, x, plan, callback, generator, eta=1.0, progress=progress, after_step=after_step)


def ddpm(denoise: Denoise, x: torch.Tensor, plan: Plan, callback=None, generator=None, eta: float = 0.0,
         progress: bool = False, after_step=None) -> torch.Tensor:
    """DDPM's ancestral sampling (Ho et al. 2020, Algorithm 2; respaced to fewer steps):
    sample x_{t-1} from the posterior q(x_{t-1} | x_t, x0_hat). Its mean and variance are
    those of DDIM with eta = 1 (Song et al. 2021, section 4.1)."""
    return ddim(denoise, x, plan, callback, generator, eta=1.0, progress=progress, after_step=after_step)


def dpmpp_2m(denoise: Denoise, x: torch.Tensor, plan: Plan, callback=None, generator=None, eta: float = 0.0,
             progress: bool = False, after_step=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), in k-diffusion's form.

    With lambda = -log sigma and h = lambda_next - lambda, the exact solution of the ODE
    for a constant x0_hat is x_next = (sigma_next / sigma) x + (1 - e^-h) x0_hat. 2M
    replaces x0_hat by a linear extrapolation from the previous step's estimate:
        D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev,   r = h_prev / h,
    and falls back to first order at the first step and at the last (sigma_next = 0).
    """
    x0_prev, h_prev = None, None
    for i, (t, sigma, sigma_next) in _walk(plan, progress):
        eps, x0 = _predict(denoise, x, t, sigma, i, callback)
        if sigma_next == 0:
            x = _after(x0, i, after_step)
            continue
        h = math.log(sigma / sigma_next)
        d = x0 if x0_prev is None else (1 + h / (2 * h_prev)) * x0 - h / (2 * h_prev) * x0_prev
        x = _after((sigma_next / sigma) * x - math.expm1(-h) * d, i, after_step)
        x0_prev, h_prev = x0, h
    return x


def _after(x: torch.Tensor, i: int, after_step) -> torch.Tensor:
    """`after_step(x, i) -> x` lets a caller constrain the state after each step
    (inpainting pastes the known region back); samplers stay ignorant of why."""
    return x if after_step is None else after_step(x, i)


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Fresh Gaussian noise, drawn on the generator's device as diffusers' randn_tensor does."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


SAMPLERS = {"euler": euler, "euler_ancestral": euler_ancestral, "ddim": ddim, "ddpm": ddpm, "dpmpp_2m": dpmpp_2m}
