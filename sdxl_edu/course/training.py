"""What lesson 14 trains: SDXL's objective on nano's pictures, with a UNet small enough to learn
something in a minute on a laptop CPU.

SDXL is trained as Stable Diffusion is: latent diffusion's conditional objective (Rombach et al.
2022, eq. 3) on the latents of a retrained autoencoder of the same architecture, with the same
discrete 1000-step schedule (Podell et al. 2023, sections 2.4 and 2.5). Noise a clean latent
x0 to a random timestep t in one jump (lesson 2's `q_sample`) and regress the noise,

    L = E_{x0, c, eps ~ N(0, I), t ~ U{0, ..., 999}} || eps - eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t, c) ||^2,

with a_t = alpha_bar_t (Ho et al. 2020, eq. 14, "L_simple"). The condition c (the context,
and `y`: pooled embedding and sizes) is dropped for a fraction of the batch, zeroed as SDXL's
conditioner zeroes it, so that one network also learns the unconditional prediction that
classifier-free guidance subtracts (Ho & Salimans 2022, Algorithm 1, p_uncond = 0.1 or 0.2).

This module holds the parts of that lesson that are not the lesson: the data (single-object
scenes, encoded once by the model's own autoencoder and text encoders), a small UNet config
built from the model's widths, and a reference loss to fall back on until the learner's is
right. The training loop itself is in the notebook.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import UNetConfig
from ..model.conditioning import micro_conditioning_ids
from ..nano.data import COLOURS, SHAPES
from ..nano.scenes import BUCKETS, render_caption
from ..sampling.schedule import NoiseSchedule

__all__ = ["CAPTIONS", "SIDE", "TrainingSet", "training_set", "small_unet_config", "batch", "drop_captions",
           "denoising_loss", "gaussian_denoiser_loss"]

CAPTIONS = tuple(f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES)  # 5 colours x 3 shapes
SIDE = BUCKETS[0][0]  # nano's square bucket, 128 px: 16 x 16 latents at f = 8


@dataclass
class TrainingSet:
    """Pictures as the UNet sees them in training: latents (scaled by the VAE's scaling
    factor), and for each its caption's index into `captions`, whose text embeddings
    (`context`, `pooled`) are computed once, as the frozen text encoders allow."""

    latents: torch.Tensor  # (N, 4, SIDE / 8, SIDE / 8)
    caption_index: torch.Tensor  # (N,) into captions
    captions: tuple[str, ...]
    context: torch.Tensor  # (len(captions), 77, context_dim)
    pooled: torch.Tensor  # (len(captions), pooled_dim)
    ids: torch.Tensor  # the micro-conditioning: an uncropped SIDE x SIDE original, target SIDE x SIDE

    def __len__(self) -> int:
        return len(self.latents)


@torch.no_grad()
def training_set(pipe, n: int, seed: int, captions: tuple[str, ...] = CAPTIONS) -> TrainingSet:
    """`n` pictures drawn exactly as their caption says (`nano.scenes.render_caption`),
    captions chosen uniformly, encoded by `pipe`'s autoencoder (the mean of its posterior,
    times the scaling factor) and text encoders.

    >>> from sdxl_edu import load_pipeline  # nano SDXL
    >>> data = training_set(load_pipeline(), 4, seed=0)
    >>> len(data), tuple(data.latents.shape[1:]), data.context.shape[0] == len(CAPTIONS)
    (4, (4, 16, 16), True)
    """
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(captions), n)
    pixels = torch.stack([torch.from_numpy(render_caption(rng, captions[i]).image).permute(2, 0, 1)
                          for i in index]).float() / 127.5 - 1
    vae = pipe.vae
    param = next(vae.parameters())
    pixels = pixels.contiguous(memory_format=torch.channels_last)  # same latents (within 2e-5), 30% faster on CPU
    latents = torch.cat([vae.encode(pixels[i:i + 64].to(param.device, param.dtype)).mean.float().cpu()
                         for i in range(0, n, 64)]) * vae.scaling_factor
    context, pooled = pipe.conditioner.encode_text(list(captions))
    ids = micro_conditioning_ids((SIDE, SIDE), (0, 0), (SIDE, SIDE))
    return TrainingSet(latents, torch.from_numpy(index), tuple(captions), context.float().cpu(),
                       pooled.float().cpu(), ids)


def small_unet_config(pipe, channels: tuple[int, ...] = (32, 64)) -> UNetConfig:
    """SDXL's UNet in the small: two levels, attention only at the lower one (SDXL has none at
    its first level either), one transformer block, reading `pipe`'s context and `y` widths so
    that the same text encoders condition it. About 1.3 M parameters with nano's widths.

    >>> from sdxl_edu import load_pipeline  # nano SDXL
    >>> cfg = small_unet_config(load_pipeline())
    >>> cfg.channels, cfg.transformer_depth
    ((32, 64), (0, 1))
    """
    return UNetConfig(channels=channels, num_res_blocks=1, transformer_depth=(0,) + (1,) * (len(channels) - 1),
                      transformer_depth_middle=1, num_head_channels=32, context_dim=pipe.unet_config.context_dim,
                      adm_in_channels=pipe.unet_config.adm_in_channels)


def batch(data: TrainingSet, size: int, generator: torch.Generator):
    """A random batch: clean latents x0, their context and pooled embeddings, caption indices.

    >>> from sdxl_edu import load_pipeline  # nano SDXL
    >>> x0, context, pooled, which = batch(training_set(load_pipeline(), 4, 0), 3, torch.Generator().manual_seed(0))
    >>> x0.shape[0], context.shape[0], pooled.shape[0], which.shape
    (3, 3, 3, torch.Size([3]))
    """
    idx = torch.randint(0, len(data), (size,), generator=generator)
    which = data.caption_index[idx]
    return data.latents[idx], data.context[which], data.pooled[which], which


def drop_captions(context: torch.Tensor, pooled: torch.Tensor, keep: torch.Tensor):
    """Caption dropout as SDXL's conditioner does it: where `keep` is False, the context and
    the pooled embedding become zeros (not the empty prompt's embedding), which is also what
    the pipeline feeds the unconditional branch (`force_zeros_for_empty_prompt`).

    >>> c, p = drop_captions(torch.ones(2, 3, 4), torch.ones(2, 5), torch.tensor([True, False]))
    >>> c.sum((1, 2)).tolist(), p.sum(1).tolist()
    ([12.0, 0.0], [5.0, 0.0])
    """
    keep = keep.to(context.dtype)
    return context * keep[:, None, None], pooled * keep[:, None]


def denoising_loss(unet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, context: torch.Tensor,
                   y: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """L_simple: the mean squared error between the noise and the UNet's prediction of it
    from the noised latent, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (or the
    schedule's v target, for a v-prediction schedule).

    >>> from sdxl_edu.model.unet import UNet
    >>> from sdxl_edu import load_pipeline  # nano SDXL
    >>> pipe = load_pipeline(); unet = UNet(small_unet_config(pipe))
    >>> x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    >>> context = torch.zeros(2, 77, unet.config.context_dim); y = torch.zeros(2, unet.config.adm_in_channels)
    >>> loss = denoising_loss(unet, x0, torch.tensor([10, 900]), noise, context, y, NoiseSchedule())
    >>> bool(torch.isclose(loss, noise.pow(2).mean()))  # the output layer starts at zero: the loss is E[eps^2]
    True
    """
    x_t = schedule.q_sample(x0, t, noise)
    return F.mse_loss(unet(x_t, t, context, y), schedule.training_target(x0, t, noise))


def gaussian_denoiser_loss(data: TrainingSet, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                           schedule: NoiseSchedule) -> torch.Tensor:
    """Per picture, the loss of the best noise predictor that knows only each latent value's
    mean m and variance s^2 over `data` (x0 taken as Gaussian, independent per value):

        eps_hat = b (x_t - a m) / (a^2 s^2 + b^2),   a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t),

    whose expected error per value is a^2 s^2 / (a^2 s^2 + b^2). A network that has learned
    nothing about shapes and colours does no better; at high noise a trained diffusion model's
    prediction is close to this Gaussian one (Wang & Vastola 2023, "The hidden linear structure
    in score-based models and its application").

    >>> from sdxl_edu import load_pipeline  # nano SDXL
    >>> data = training_set(load_pipeline(), 8, 0)
    >>> noise = torch.randn(8, *data.latents.shape[1:])
    >>> loss = gaussian_denoiser_loss(data, data.latents, torch.full((8,), 999), noise, NoiseSchedule())
    >>> loss.shape, bool((loss < noise.pow(2).mean((1, 2, 3))).all())  # better than predicting zero
    (torch.Size([8]), True)
    """
    m, s2 = data.latents.mean(0), data.latents.var(0)
    alpha_bar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x_t = a * x0 + b * noise
    eps_hat = b * (x_t - a * m) / (a**2 * s2 + b**2)
    return (eps_hat - noise).pow(2).mean((1, 2, 3))
