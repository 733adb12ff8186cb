"""The two classifiers nano SDXL ships with, both small CNNs with one head per attribute.

- `NoisyClassifier(x_t, t)`: reads shape, colour, position and size from a *noisy latent*
  at timestep t; trained on q_sample(latent, t). Its gradient is what classifier guidance
  adds to each step (`sdxl_edu.sampling.guidance`).
- `Evaluator(image)`: reads the same attributes from a *picture*, plus a cleanliness score
  (the degradation level, 0 = clean). It never guides anything; lessons and the benchmark
  use it to measure. It is trained on clean pictures and on their autoencoder
  reconstructions, so the autoencoder's softness alone does not read as a wrong shape.

The trained ones ship with the package (`sdxl_edu/nano/weights/`, fp16): `load_classifier()`
and `load_evaluator()` return them in float32, frozen.

>>> import torch
>>> out = Evaluator()(torch.zeros(2, 3, 64, 64))
>>> {k: tuple(v.shape) for k, v in out.items()}
{'shape': (2, 3), 'colour': (2, 5), 'position': (2, 5), 'size': (2, 2), 'degradation': (2,)}
"""

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from ..model.unet import timestep_embedding
from . import CLASSIFIER_FILE, EVALUATOR_FILE
from .data import ATTRIBUTES


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class Heads(nn.Module):
    """Pool to a 4 x 4 grid (position needs to know where), then one linear head per attribute."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(channels * 16, 128), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in ATTRIBUTES.items()})

    def forward(self, h: torch.Tensor) -> tuple[dict, torch.Tensor]:
        features = self.fc(F.adaptive_avg_pool2d(h, 4))
        return {name: head(features) for name, head in self.heads.items()}, features


class NoisyClassifier(nn.Module):
    """log p(attribute | x_t, t) on latents; the timestep enters every block (FiLM)."""

    def __init__(self, in_channels: int = 4, width: int = 64):
        super().__init__()
        self.blocks = nn.ModuleList([_block(in_channels, width), _block(width, 2 * width)])
        self.t_proj = nn.ModuleList([nn.Linear(128, 2 * width), nn.Linear(128, 4 * width)])
        self.heads = Heads(2 * width)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = timestep_embedding(torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0]), 128)
        h = x_t
        for block, proj in zip(self.blocks, self.t_proj):
            scale, shift = proj(emb.to(h.dtype)).chunk(2, dim=-1)
            h = block(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
            h = F.avg_pool2d(h, 2) if h.shape[-1] > 4 else h
        return self.heads(h)[0]


class Evaluator(nn.Module):
    """Attributes and degradation level from a picture in [-1, 1]."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(_block(3, width), nn.AvgPool2d(2), _block(width, 2 * width), nn.AvgPool2d(2),
                                    _block(2 * width, 2 * width))
        self.heads = Heads(2 * width)
        self.degradation = nn.Linear(128, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, features = self.heads(self.blocks(images))
        return {**logits, "degradation": self.degradation(features)[:, 0]}


def load_evaluator() -> Evaluator:
    """The shipped evaluator, frozen: a picture -> logits per attribute and a degradation level.

    >>> sorted(load_evaluator()(torch.zeros(1, 3, 64, 64)))
    ['colour', 'degradation', 'position', 'shape', 'size']
    """
    model = Evaluator()
    model.load_state_dict({k: v.float() for k, v in safetensors.torch.load_file(str(EVALUATOR_FILE)).items()})
    return model.eval().requires_grad_(False)


def load_classifier() -> NoisyClassifier:
    """The noise-aware classifier, for classifier guidance: `(x_t, t) -> logits per attribute`.

    >>> logits = load_classifier()(torch.randn(2, 4, 16, 16), torch.tensor([999, 10]))
    >>> logits["shape"].shape  # one logit per shape, for each of the two latents
    torch.Size([2, 3])
    """
    model = NoisyClassifier()
    model.load_state_dict({k: v.float() for k, v in safetensors.torch.load_file(str(CLASSIFIER_FILE)).items()})
    return model.eval().requires_grad_(False)
