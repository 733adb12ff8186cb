"""The noise schedule: how much signal is left at each of the 1000 training timesteps.

The forward process (Ho et al. 2020, "Denoising Diffusion Probabilistic Models") noises a
clean latent x_0 in one jump to any timestep t:

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,    eps ~ N(0, I)
    alpha_bar_t = prod_{s <= t} (1 - beta_s)

SDXL keeps SD's "scaled linear" betas: sqrt(beta) goes linearly from sqrt(0.00085) to
sqrt(0.012) over 1000 steps. Two other views of the same numbers are useful:

- sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise-to-signal ratio. Dividing x_t
  by sqrt(alpha_bar_t) gives x_0 + sigma_t eps: noise of size sigma added to the clean
  latent, the "variance exploding" view the Euler samplers work in (Karras et al. 2022).
  SDXL's sigma runs from 0.0292 (t = 0) to 14.6146 (t = 999).
- SNR_t = alpha_bar_t / (1 - alpha_bar_t) = 1 / sigma_t^2, the signal-to-noise ratio.

At t = 999 SDXL's schedule still leaves sqrt(alpha_bar) = 6.8% of the signal (see `q_sample`): the model
never sees pure noise in training but starts from pure noise at inference (Lin et al.
2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"). Their remedy,
`rescale_zero_terminal_snr`, shifts and scales sqrt(alpha_bar) so that it ends at exactly
0; it needs v-prediction, since at SNR 0 the noise alone says nothing about x_0.

Inference visits only a few of the 1000 timesteps; `timesteps` gives diffusers' three ways
to pick them. SDXL's release uses "leading" with an offset of 1 (50 steps: 981, 961, ...,
1), which never visits t = 999.

Upstream, at pinned commits: sgm's `LegacyDDPMDiscretization`
(https://github.com/Stability-AI/generative-models/blob/0ad7de9a5cb53fd63d6d30a4f385485e72e08597/sgm/modules/diffusionmodules/discretizer.py#L42),
diffusers' `EulerDiscreteScheduler.set_timesteps`
(https://github.com/huggingface/diffusers/blob/58eb52c0803ea9af3abec60841c2a093bdf1f951/src/diffusers/schedulers/scheduling_euler_discrete.py#L350).

>>> s = NoiseSchedule()
>>> round(s.sigmas[999].item(), 4), round(s.sigmas[1].item(), 6)
(14.6146, 0.041314)
>>> s.timesteps(10).tolist()
[901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]
"""

from dataclasses import dataclass, field, fields

import numpy as np
import torch

SDXL_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 1, "rescale_betas_zero_snr": False,
}


def scaled_linear_betas(beta_start: float = 0.00085, beta_end: float = 0.012, n: int = 1000) -> torch.Tensor:
    """beta_t = (sqrt(beta_start) + t / (n - 1) (sqrt(beta_end) - sqrt(beta_start)))^2.

    >>> scaled_linear_betas()[[0, -1]]
    tensor([0.0009, 0.0120])
    """
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2


def squared_cosine_betas(n: int = 1000, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule of Nichol & Dhariwal 2021 ("Improved DDPM", eq. 17), diffusers'
    "squaredcos_cap_v2": alpha_bar(t) = cos^2((t / n + 0.008) / 1.008 * pi / 2), each beta
    1 - alpha_bar(t + 1) / alpha_bar(t), capped at 0.999. unCLIP noises its image embeddings
    with it (`sdxl_edu.model.unclip`); it spends far more steps at low noise than SD's.

    >>> ab = torch.cumprod(1 - squared_cosine_betas(), 0)
    >>> round(ab[0].item(), 6), round(ab[499].item(), 3), round(ab[999].item(), 6)
    (0.999959, 0.494, 0.0)
    """
    t = torch.arange(n + 1, dtype=torch.float64) / n
    alpha_bar = torch.cos((t + 0.008) / 1.008 * torch.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta).float()


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: keep sqrt(alpha_bar_0), make sqrt(alpha_bar_T) = 0 by
    an affine map of sqrt(alpha_bar), then recover the betas.

    >>> ab = torch.cumprod(1 - rescale_zero_terminal_snr(scaled_linear_betas()), 0)
    >>> ab[-1].item(), round(ab[0].item(), 6) == round(1 - 0.00085, 6)
    (0.0, True)
    """
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


@dataclass
class NoiseSchedule:
    """A 1000-step DDPM schedule and how inference picks its timesteps.

    Field names follow diffusers' scheduler configs, so `NoiseSchedule.from_config` reads
    a diffusers `scheduler_config.json` (what a diffusers SDXL folder ships).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"  # what the UNet predicts: "epsilon" or "v_prediction"
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    rescale_betas_zero_snr: bool = False
    betas: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.beta_schedule == "scaled_linear":
            betas = scaled_linear_betas(self.beta_start, self.beta_end, self.num_train_timesteps)
        elif self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float32)
        elif self.beta_schedule == "squaredcos_cap_v2":
            betas = squared_cosine_betas(self.num_train_timesteps)
        else:
            raise ValueError(f"beta_schedule {self.beta_schedule!r} is not supported "
                             "(scaled_linear, linear, squaredcos_cap_v2)")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r}: use 'epsilon' or 'v_prediction'")
        self.betas = rescale_zero_terminal_snr(betas) if self.rescale_betas_zero_snr else betas

    @classmethod
    def from_config(cls, config: dict | None = None) -> "NoiseSchedule":
        """From a diffusers scheduler config; unknown keys are ignored, missing ones are SDXL's."""
        names = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in {**SDXL_SCHEDULER_CONFIG, **(config or {})}.items() if k in names})

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t for t = 0 .. 999. With a zero terminal SNR the last one would be 0 and
        sigma infinite; like diffusers we use 2**-24 there (sigma ~ 4096)."""
        alpha_bar = torch.cumprod(1 - self.betas, 0)
        if self.rescale_betas_zero_snr:
            alpha_bar[-1] = 2.0**-24
        return alpha_bar

    @property
    def sigmas(self) -> torch.Tensor:
        """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0 .. 999."""
        alpha_bar = self.alphas_cumprod
        return ((1 - alpha_bar) / alpha_bar) ** 0.5

    @property
    def snr(self) -> torch.Tensor:
        """SNR_t = alpha_bar_t / (1 - alpha_bar_t) = 1 / sigma_t^2."""
        alpha_bar = self.alphas_cumprod
        return alpha_bar / (1 - alpha_bar)

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise x0 to timestep t in one jump: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise.

        >>> s = NoiseSchedule()
        >>> x0, noise = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
        >>> round(s.q_sample(x0, 999, noise)[0, 0, 0, 0].item(), 4)  # signal left at t = 999
        0.0683
        """
        alpha_bar = self.alphas_cumprod.to(x0.device)[torch.as_tensor(t, device=x0.device).long()]
        alpha_bar = alpha_bar.reshape(-1, *[1] * (x0.ndim - 1)).to(x0.dtype)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The v-prediction target (Salimans & Ho 2022): v = sqrt(ab) eps - sqrt(1 - ab) x0."""
        alpha_bar = self.alphas_cumprod.to(x0.device)[t.long()].reshape(-1, *[1] * (x0.ndim - 1))
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to output for x_t = q_sample(x0, t, noise): the noise itself
        for an epsilon model (SDXL's, Ho et al. 2020), `v_target` for a v-prediction one.

        >>> x0, noise, t = torch.ones(1, 1), torch.zeros(1, 1), torch.tensor([999])
        >>> NoiseSchedule().training_target(x0, t, noise).item()
        0.0
        >>> round(NoiseSchedule(prediction_type="v_prediction").training_target(x0, t, noise).item(), 4)
        -0.9977
        """
        return self.v_target(x0, t, noise) if self.prediction_type == "v_prediction" else noise

    def to_eps(self, out: torch.Tensor, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The UNet's output as a noise prediction: as it is for an epsilon model, through
        `v_to_eps` for a v-prediction one (x is the sampler's state in the sigma view).

        >>> out, x = torch.ones(1), torch.zeros(1)
        >>> NoiseSchedule().to_eps(out, x, 1.0).tolist(), NoiseSchedule(prediction_type="v_prediction").to_eps(
        ...     out, x, 1.0).tolist()
        ([1.0], [0.7071...])
        """
        return v_to_eps(out, x, sigma) if self.prediction_type == "v_prediction" else out

    def timesteps(self, num_inference_steps: int, spacing: str | None = None) -> torch.Tensor:
        """Which training timesteps a run of `num_inference_steps` visits, high to low.

        - leading:  0, k, 2k, ... (k = 1000 // n) plus the offset, reversed (SDXL);
        - trailing: 999, 999 - k', ... (k' = 1000 / n), always starting at t = 999;
        - linspace: n evenly spaced values from 999 down to 0.

        >>> s = NoiseSchedule()
        >>> s.timesteps(4, "trailing").tolist(), s.timesteps(4, "linspace").tolist()
        ([999.0, 749.0, 499.0, 249.0], [999.0, 666.0, 333.0, 0.0])
        """
        n, T = num_inference_steps, self.num_train_timesteps
        spacing = spacing or self.timestep_spacing
        if spacing == "leading":
            t = (np.arange(0, n) * (T // n)).round()[::-1] + self.steps_offset
        elif spacing == "trailing":
            t = np.arange(T, 0, -T / n).round() - 1
        elif spacing == "linspace":
            t = np.linspace(0, T - 1, n)[::-1]
        else:
            raise ValueError(f"timestep_spacing {spacing!r}: use 'leading', 'trailing' or 'linspace'")
        return torch.from_numpy(t.astype(np.float32).copy())

    def sigma_at(self, timesteps: torch.Tensor) -> torch.Tensor:
        """sigma at (possibly fractional) timesteps, linearly interpolated as diffusers does.

        >>> NoiseSchedule().sigma_at(torch.tensor([999.0, 0.0]))
        tensor([14.6146,  0.0292])
        """
        table = self.sigmas.numpy()
        return torch.from_numpy(np.interp(timesteps.numpy(), np.arange(len(table)), table).astype(np.float32))

    def t_at(self, sigma: np.ndarray) -> np.ndarray:
        """The (fractional) timestep of a sigma: interpolate in log sigma (k-diffusion's sigma_to_t).

        >>> NoiseSchedule().t_at(np.array([14.6146, 1.0])).round(1)  # SNR = 1 near t = 354
        array([999. , 353.9])
        """
        log_sigmas = np.log(self.sigmas.numpy().astype(np.float64))
        log_sigma = np.log(np.maximum(sigma, 1e-10))
        low = np.clip(np.cumsum(log_sigma - log_sigmas[:, None] >= 0, axis=0).argmax(axis=0), None, len(log_sigmas) - 2)
        w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
        return (1 - w) * low + w * (low + 1)


def v_to_eps(v: torch.Tensor, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """The noise prediction of a v-prediction model (Salimans & Ho 2022), in the sigma view.

    With x = x0 + sigma eps and the UNet's input x_t = x / sqrt(sigma^2 + 1), the schedule's
    sqrt(alpha_bar) = 1 / sqrt(sigma^2 + 1) and sqrt(1 - alpha_bar) = sigma / sqrt(sigma^2 + 1), so
    v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 gives

        x0_hat  = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) v
        eps_hat = (x - x0_hat) / sigma

    The samplers then treat every model as an epsilon model.

    >>> s, t = NoiseSchedule(), torch.tensor([500])
    >>> g = torch.Generator().manual_seed(0)
    >>> x0, eps = torch.randn(1, 4, 2, 2, generator=g), torch.randn(1, 4, 2, 2, generator=g)
    >>> v, sigma = s.v_target(x0, t, eps), s.sigmas[500]
    >>> torch.allclose(v_to_eps(v, x0 + sigma * eps, sigma), eps, atol=1e-5)
    True
    """
    x0 = v * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    return (x - x0) / sigma


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho: more steps at low noise, where detail is decided.

    >>> karras_sigmas(0.1, 10.0, 3).round(3)
    array([10.   ,  1.451,  0.1  ])
    """
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
