"""Checkers for lesson 14, training the UNet: the learner's loss and caption dropout are run
beside the library's (`sdxl_edu.course.training`) on a small random UNet; every truth is
computed on the spot."""

import torch

from ...config import UNetConfig
from ...model.unet import UNet
from ...sampling.schedule import NoiseSchedule
from ..training import denoising_loss, drop_captions
from .verdict import NOT_YET, Verdict, close


def _random_unet(seed: int = 0) -> UNet:
    """A small UNet whose output layer is not zero, so that a wrong x_t shows in the loss."""
    torch.manual_seed(seed)
    unet = UNet(UNetConfig(channels=(32,), num_res_blocks=1, transformer_depth=(1,), transformer_depth_middle=1,
                           num_head_channels=32, context_dim=16, adm_in_channels=24)).eval()
    torch.nn.init.normal_(unet.out[-1].weight, std=0.05)
    return unet


def denoising_loss_rule(fn) -> Verdict:
    """`fn(unet, x0, t, noise, context, y, alphas_cumprod)` should be SDXL's training loss:
    noise x0 to x_t in one jump and return the mean squared error between the UNet's output
    at (x_t, t) and the noise.

    >>> def mine(unet, x0, t, noise, context, y, ab):
    ...     a = ab[t].reshape(-1, 1, 1, 1)
    ...     return ((unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, context, y) - noise) ** 2).mean()
    >>> denoising_loss_rule(mine).ok
    True
    >>> denoising_loss_rule(lambda unet, x0, t, noise, context, y, ab: ((unet(x0 + noise, t, context, y) - noise) ** 2).mean()).ok
    False
    """
    if fn is None:
        return NOT_YET
    unet, schedule = _random_unet(), NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([5, 400, 990])
    context, y = torch.randn(3, 77, 16, generator=g), torch.randn(3, 24, generator=g)
    with torch.no_grad():
        got = fn(unet, x0, t, noise, context, y, schedule.alphas_cumprod)
        if got is None:
            return NOT_YET
        truth = denoising_loss(unet, x0, t, noise, context, y, schedule)
        x_t = schedule.q_sample(x0, t, noise)
        wrong_target = torch.nn.functional.mse_loss(unet(x_t, t, context, y), x0)
    got = torch.as_tensor(got)
    if got.numel() != 1:
        return Verdict(False, f"your loss has {got.numel()} values: average the squared error over the batch and "
                              "every latent value, to one number (`.mean()`), as backward() needs.")
    if close(got, truth, 1e-5):
        return Verdict(True, f"{truth.item():.4f}: the UNet sees x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) "
                             "eps and is scored on how well it names eps.")
    if close(got, wrong_target, 1e-5):
        return Verdict(False, "you scored the prediction against x0: SDXL's UNet predicts the noise eps "
                              "(prediction_type 'epsilon'), so the target is the noise you added.")
    return Verdict(False, f"your loss is {got.item():.4f}, SDXL's {truth.item():.4f}. Build x_t with "
                          "alphas_cumprod[t] (reshaped to (B, 1, 1, 1)): sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) noise; "
                          "then the mean of (unet(x_t, t, context, y) - noise)^2.")


def caption_dropout_rule(fn) -> Verdict:
    """`fn(context, pooled, keep) -> (context, pooled)` should drop the captions where `keep`
    is False, as SDXL's conditioner does: both embeddings become zeros.

    >>> caption_dropout_rule(lambda c, p, keep: (c * keep[:, None, None], p * keep[:, None])).ok
    True
    >>> caption_dropout_rule(lambda c, p, keep: (c * keep[:, None, None], p)).ok
    False
    """
    if fn is None:
        return NOT_YET
    g = torch.Generator().manual_seed(2)
    context, pooled = torch.randn(4, 77, 8, generator=g), torch.randn(4, 6, generator=g)
    keep = torch.tensor([True, False, True, False])
    got = fn(context.clone(), pooled.clone(), keep)
    if got is None or any(part is None for part in got):
        return NOT_YET
    truth = drop_captions(context, pooled, keep)
    got_context, got_pooled = (torch.as_tensor(part, dtype=torch.float32) for part in got)
    if close(got_context, truth[0]) and close(got_pooled, truth[1]):
        return Verdict(True, "dropped captions become zeros in the context and in the pooled embedding alike, "
                             "which is what the pipeline's unconditional branch feeds the UNet at sampling.")
    if close(got_context, truth[0]) and close(got_pooled, pooled):
        return Verdict(False, "the pooled embedding still carries the caption through y: zero it too.")
    if close(got_context, context * (~keep)[:, None, None].float()):
        return Verdict(False, "you zeroed the captions that should be kept: `keep` is True where the caption stays.")
    return Verdict(False, "where keep is False the row of the context (B, 77, width) and of pooled (B, width) "
                          "becomes zeros; where it is True the row is unchanged.")


def v_loss_at_init(answer, variance: float = 0.5) -> Verdict:
    """The loss of an untrained v-prediction UNet (its output zero) on latents of variance
    `variance`, averaged over t uniform on 0..999 of SDXL's schedule: E[v^2] with
    v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0, so mean_t (alpha_bar + variance (1 - alpha_bar)).

    >>> ab = NoiseSchedule().alphas_cumprod
    >>> v_loss_at_init(float((ab + 0.5 * (1 - ab)).mean())).ok, v_loss_at_init(1.0).ok
    (True, False)
    """
    if answer is None:
        return NOT_YET
    alpha_bar = NoiseSchedule().alphas_cumprod.double()
    truth = float((alpha_bar + variance * (1 - alpha_bar)).mean())
    if abs(float(answer) - truth) <= 0.01:
        return Verdict(True, f"{truth:.3f}: E[v^2] = alpha_bar E[eps^2] + (1 - alpha_bar) E[x0^2], high where the "
                             "schedule keeps signal and near the data's variance where it is all noise.")
    if abs(float(answer) - 1.0) <= 0.01:
        return Verdict(False, "1 is the epsilon model's loss at initialisation (E[eps^2]); v mixes eps and x0, "
                              f"and x0 has variance {variance} here.")
    return Verdict(False, "expand E[v^2] with eps and x0 independent: alpha_bar_t * 1 + (1 - alpha_bar_t) * "
                          "variance; average it over the 1000 values of alpha_bar_t of SDXL's schedule.")
