"""Schedules and samplers against diffusers' schedulers with the released SDXL config."""

import json

import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler)

from tiny import DATA

from sdxl_edu.sampling.samplers import SAMPLERS, Prediction, make_plan
from sdxl_edu.sampling.schedule import SDXL_SCHEDULER_CONFIG, NoiseSchedule

SCHEDULERS = {"euler": EulerDiscreteScheduler, "euler_ancestral": EulerAncestralDiscreteScheduler,
              "ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}


RELEASED = json.loads((DATA / "scheduler_config.json").read_text())  # clip_sample false, set_alpha_to_one false


def diffusers_scheduler(name, config=None, **extra):
    return SCHEDULERS[name].from_config({**RELEASED, **(config or {}), **extra})


def test_released_config_is_ours():
    assert NoiseSchedule.from_config(RELEASED) == NoiseSchedule.from_config(SDXL_SCHEDULER_CONFIG)


def test_known_values():
    s = NoiseSchedule()
    assert s.timesteps(50).tolist() == list(range(981, 0, -20))
    assert abs(s.sigmas[999].item() - 14.6146) < 1e-4
    assert abs(s.sigmas[1].item() - 0.041314) < 1e-6
    assert abs(make_plan(s, "euler", 50).init_noise_sigma - 13.158469) < 1e-5


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_and_sigmas_match_diffusers(name, spacing):
    ours = NoiseSchedule.from_config({"timestep_spacing": spacing})
    for n in (1, 2, 3, 7, 10, 20, 25, 30, 33, 40, 50, 100):
        theirs = diffusers_scheduler(name, timestep_spacing=spacing)
        theirs.set_timesteps(n)
        plan = make_plan(ours, name, n)
        assert plan.timesteps.tolist() == theirs.timesteps.float().tolist(), (n, spacing)
        if name in ("euler", "euler_ancestral", "dpmpp_2m"):
            assert torch.allclose(plan.sigmas, theirs.sigmas.float(), atol=1e-6, rtol=1e-6)
            if name != "dpmpp_2m":
                assert abs(plan.init_noise_sigma - float(theirs.init_noise_sigma)) < 1e-5


def test_karras_sigmas_match_diffusers():
    for n in (5, 20, 50):
        theirs = diffusers_scheduler("dpmpp_2m", use_karras_sigmas=True)
        theirs.set_timesteps(n)
        plan = make_plan(NoiseSchedule(), "dpmpp_2m", n, use_karras_sigmas=True)
        assert plan.timesteps.tolist() == theirs.timesteps.float().tolist()
        assert torch.allclose(plan.sigmas, theirs.sigmas.float(), rtol=1e-5)


class ToyModel(torch.nn.Module):
    """A stand-in for the UNet whose samples have the scale of real latents: the exact noise
    prediction for data x0 ~ N(m, s^2 I) (m a fixed pattern), plus a non-linear term.

        eps_hat(x_t, t) = sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab) + 0.1 tanh(W x_t)
    """

    def __init__(self, schedule: NoiseSchedule | None = None, s: float = 0.8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.m = torch.randn(1, 4, 8, 8, generator=g)
        self.w = torch.randn(4, 4, generator=g) * 0.5
        self.alphas_cumprod, self.s = (schedule or NoiseSchedule()).alphas_cumprod, s

    def forward(self, x_t, t):
        ab = torch.tensor(np.interp(float(t), np.arange(1000), self.alphas_cumprod.numpy()), dtype=torch.float32)
        exact = (1 - ab).sqrt() * (x_t - ab.sqrt() * self.m) / (ab * self.s**2 + 1 - ab)
        return exact + 0.1 * torch.tanh(torch.einsum("oc,bchw->bohw", self.w, x_t))


def diffusers_loop(name, n, noise, model, seed, config=None, **extra):
    scheduler = diffusers_scheduler(name, config, **extra)
    scheduler.set_timesteps(n)
    x = noise * scheduler.init_noise_sigma
    g = torch.Generator().manual_seed(seed)
    kwargs = {"generator": g} if name in ("euler_ancestral", "ddim", "ddpm") else {}
    if name == "ddim":
        kwargs["eta"] = extra.get("eta_", 0.0)
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t.float())
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def our_loop(name, n, noise, model, seed, config=None, **extra):
    schedule = NoiseSchedule.from_config(config)
    plan = make_plan(schedule, name, n, use_karras_sigmas=extra.get("use_karras_sigmas", False))
    x = noise * plan.init_noise_sigma
    kwargs = {"eta": extra["eta_"]} if "eta_" in extra else {}

    def denoise(x, sigma, t):
        return schedule.to_eps(model(x / (sigma**2 + 1) ** 0.5, t), x, sigma)

    x = SAMPLERS[name](denoise, x, plan, generator=torch.Generator().manual_seed(seed), **kwargs)
    return plan.from_sigma_view(x)


@pytest.mark.parametrize("name,extra", [("euler", {}), ("euler_ancestral", {}), ("ddim", {}),
                                        ("ddim", {"eta_": 0.5}), ("ddpm", {}), ("dpmpp_2m", {}),
                                        ("dpmpp_2m", {"use_karras_sigmas": True})])
@pytest.mark.parametrize("n", [4, 20])
def test_sampler_loops_match_diffusers(name, extra, n):
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    model = ToyModel()
    theirs = diffusers_loop(name, n, noise, model, seed=7, **extra)
    ours = our_loop(name, n, noise, model, seed=7, **extra)
    assert 0.3 < ours.std() < 3  # latents at the scale of real ones, not collapsed or exploded
    assert (ours - theirs).abs().max() < 1e-5


def test_zero_terminal_snr_v_prediction_matches_diffusers():
    config = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
    assert NoiseSchedule.from_config(config).timesteps(10)[0] == 999
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for name in ("euler", "euler_ancestral"):
        model = ToyModel(NoiseSchedule.from_config(config))
        theirs = diffusers_loop(name, 10, noise, model, 3, config)
        ours = our_loop(name, 10, noise, model, 3, config)
        assert (ours - theirs).abs().max() < 1e-5


def test_every_sampler_takes_the_same_arguments_and_records_the_branches():
    plan, seen = make_plan(NoiseSchedule(), "euler", 3), []

    def denoise(x, sigma, t):  # a guided prediction: eps and the two branches it came from
        return Prediction(torch.zeros_like(x), eps_cond=torch.ones_like(x), eps_uncond=-torch.ones_like(x))

    for sampler in SAMPLERS.values():
        seen.clear()
        sampler(denoise, torch.randn(1, 4, 2, 2), plan, seen.append, torch.Generator().manual_seed(0), 0.0)
        assert len(seen) == 3
        assert all(bool((s.eps_cond == 1).all() and (s.eps_uncond == -1).all()) for s in seen)
