"""Looking at latents, steps and attention without decoding everything.

A full VAE decode is the honest picture of a latent but costs as much as several UNet
steps at SDXL's size. For watching a generation step by step, a *linear* map from the 4
latent channels to RGB is enough: each latent pixel summarises an f x f patch, and its
channels mostly encode that patch's colour. `fit_latent_rgb` fits the map by least
squares on pictures we make and encode (so it works for any autoencoder, SDXL's or nano's):

    rgb(patch) ~ A z + b,    A: 3 x 4,  b: 3,  fitted over every latent pixel

>>> import torch
>>> preview = LatentRGB(torch.eye(3, 4), torch.zeros(3))
>>> preview(torch.ones(1, 4, 2, 2)).shape
torch.Size([1, 3, 2, 2])
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class LatentRGB:
    """A fitted linear map from scaled latents to RGB in [0, 1]."""

    matrix: torch.Tensor  # (3, 4)
    bias: torch.Tensor  # (3,)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        rgb = torch.einsum("rc,bchw->brhw", self.matrix.to(latents), latents) + self.bias.to(latents)[:, None, None]
        return rgb.clamp(0, 1)


def calibration_images(n: int = 12, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Pictures for fitting: flat backgrounds with coloured rectangles, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.empty(n, 3, size, size)
    for image in images:
        image[:] = torch.rand(3, 1, 1, generator=g)
        for _ in range(4):
            y0, x0 = torch.randint(0, size - 8, (2,), generator=g).tolist()
            h, w = torch.randint(8, size // 2, (2,), generator=g).tolist()
            image[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g)
    return images * 2 - 1


@torch.no_grad()
def fit_latent_rgb(vae, images: torch.Tensor | None = None) -> LatentRGB:
    """Least-squares fit of RGB (average over each latent pixel's patch) on scaled latents.

    >>> from sdxl_edu.testing import TOY_VAE
    >>> from sdxl_edu.model.vae import AutoencoderKL
    >>> fit_latent_rgb(AutoencoderKL(TOY_VAE)).matrix.shape
    torch.Size([3, 4])
    """
    images = calibration_images() if images is None else images
    dtype, device = next(vae.parameters()).dtype, next(vae.parameters()).device
    z = vae.encode(images.to(device, dtype)).mean.float().cpu() * vae.scaling_factor
    target = F.avg_pool2d((images + 1) / 2, vae.config.downsampling_factor)
    Z = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), torch.ones(z[:, 0].numel(), 1)], dim=1)
    Y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(Z, Y).solution  # (5, 3)
    return LatentRGB(solution[:-1].T.contiguous(), solution[-1])


def to_pil(images: torch.Tensor, scale: int = 1) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> PIL images, optionally enlarged (nearest) for small latents.

    >>> to_pil(torch.zeros(2, 3, 16, 16), scale=4)[0].size
    (64, 64)
    """
    arrays = (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST) for a in arrays]


def grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Paste equally sized images into rows of `columns`.

    >>> grid([Image.new("RGB", (4, 4))] * 5, 3).size
    (12, 8)
    """
    w, h = images[0].size
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (columns * w, rows * h), "white")
    for k, image in enumerate(images):
        canvas.paste(image, ((k % columns) * w, (k // columns) * h))
    return canvas


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """An attention heat map (h, w), normalised to [0, 1], over a picture, in matplotlib's
    'jet' colours.

    >>> overlay(Image.new("RGB", (64, 64)), torch.rand(16, 16)).size
    (64, 64)
    """
    import matplotlib

    heat = heat.float()
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-8)
    heat = F.interpolate(heat[None, None], size=image.size[::-1], mode="bilinear", align_corners=False)[0, 0]
    colours = (matplotlib.colormaps["jet"](heat.numpy())[..., :3] * 255).astype(np.uint8)
    return Image.blend(image.convert("RGB"), Image.fromarray(colours), alpha)


def labelled_grid(images: list[Image.Image], labels: list[str], columns: int, scale: int = 2) -> Image.Image:
    """A grid of pictures, each enlarged `scale` times with its label written under it.

    >>> labelled_grid([Image.new("RGB", (64, 64))] * 3, ["a", "b", "c"], columns=3).size
    (384, 144)
    """
    from PIL import ImageDraw

    w, h = images[0].size[0] * scale, images[0].size[1] * scale
    tiles = []
    for image, label in zip(images, labels):
        tile = Image.new("RGB", (w, h + 16), "white")
        tile.paste(image.convert("RGB").resize((w, h), Image.NEAREST), (0, 0))
        ImageDraw.Draw(tile).text((2, h + 2), label, fill="black")
        tiles.append(tile)
    return grid(tiles, columns)


def x0_steps(preview, runs: dict, shown: list[int], size: int = 96) -> Image.Image:
    """One row per run (a pipeline output made with `record=True`): the sampler's guess of the
    clean latent, x0, at the steps `shown`, through `preview` (a latent -> RGB map such as
    `pipe.latent_preview`), each labelled with its run's name and timestep. Where two rows part
    is where their pictures were decided.

    >>> from types import SimpleNamespace as Run
    >>> step = Run(x0=torch.zeros(1, 4, 8, 8), t=torch.tensor(999.0))
    >>> preview = LatentRGB(torch.eye(3, 4), torch.zeros(3))
    >>> x0_steps(preview, {"a": Run(steps=[step] * 3), "b": Run(steps=[step] * 3)}, [0, 2], size=32).size
    (128, 160)
    """
    pictures = [to_pil(preview(run.steps[i].x0))[0].resize((size, size)) for run in runs.values() for i in shown]
    labels = [f"{name} t={int(run.steps[i].t)}" for name, run in runs.items() for i in shown]
    return labelled_grid(pictures, labels, columns=len(shown))
