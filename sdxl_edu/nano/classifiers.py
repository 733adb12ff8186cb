"""The two classifiers nano SDXL ships with, for scenes of several objects.

- `SceneClassifier(x_t, t)`: which (shape, colour) pairs a *noisy latent* at timestep t
  shows, one logit per pair, trained on q_sample(latent, t). Its gradient toward "a red
  circle" is what classifier guidance adds to each step (`sdxl_edu.sampling.guidance`): a
  pair, not a shape and a colour apart, so that guidance binds the colour to the shape.
- `SceneEvaluator(image)`: which object each pixel of a *picture* belongs to, as one of the
  15 (shape, colour) pairs or the background (a segmentation at a quarter of the picture's
  side), plus a cleanliness score (the degradation level, 0 = clean). It never guides
  anything; the benchmark and the lessons use it to read every object of a picture
  (`sdxl_edu.nano.scene_reading`). It is trained on clean pictures, their autoencoder
  reconstructions and degraded copies, so the autoencoder's softness alone does not read as
  a wrong shape.

>>> out = SceneEvaluator()(torch.zeros(2, 3, 128, 128))
>>> tuple(out["segmentation"].shape), tuple(out["degradation"].shape)
((2, 16, 32, 32), (2,))
>>> tuple(SceneClassifier()(torch.zeros(2, 4, 16, 16), torch.tensor([999, 10])).shape)
(2, 3, 5)
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.unet import timestep_embedding
from . import CLASSIFIER_FILE, EVALUATOR_FILE
from .data import COLOURS, SHAPES

PAIRS = len(SHAPES) * len(COLOURS)  # the segmentation's classes are 0 (background) and 1 + 5 shape + colour


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class SceneClassifier(nn.Module):
    """logit p((shape, colour) in the picture | x_t, t) on latents; the timestep enters every
    block (FiLM), and a global pool makes it read any bucket's latents."""

    def __init__(self, in_channels: int = 4, width: int = 64):
        super().__init__()
        self.blocks = nn.ModuleList([_block(in_channels, width), _block(width, 2 * width), _block(2 * width, 2 * width)])
        self.t_proj = nn.ModuleList([nn.Linear(128, 2 * width), nn.Linear(128, 4 * width), nn.Linear(128, 4 * width)])
        self.head = nn.Linear(2 * width, PAIRS)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0]), 128)
        h = x_t
        for i, (block, proj) in enumerate(zip(self.blocks, self.t_proj)):
            scale, shift = proj(emb.to(h.dtype)).chunk(2, dim=-1)
            h = block(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
            h = F.avg_pool2d(h, 2) if i < 2 else h
        return self.head(h.amax((2, 3))).reshape(-1, len(SHAPES), len(COLOURS))  # present anywhere: the max


class SceneEvaluator(nn.Module):
    """Per-pixel classes at a quarter of the side (background or a (shape, colour) pair) and a
    degradation level, from a picture in [-1, 1]. A small U-Net on the picture at half size:
    down to an eighth of the side, where a large object (half the picture) fits in the
    receptive field, and back up to a quarter with the skip connection."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.down = nn.ModuleList([_block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width),
                                   _block(4 * width, 4 * width)])
        self.up = _block(8 * width, 2 * width)  # the eighth, brought up, beside the quarter
        self.segmentation = nn.Conv2d(2 * width, 1 + PAIRS, 1)
        self.degradation = nn.Linear(4 * width, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.down[0](F.avg_pool2d(images, 2))  # read at half size: a small object is still 16 pixels across
        h = self.down[1](h)
        quarter = self.down[2](F.avg_pool2d(h, 2))
        eighth = self.down[3](F.avg_pool2d(quarter, 2))
        h = self.up(torch.cat([F.interpolate(eighth, size=quarter.shape[-2:], mode="nearest"), quarter], 1))
        return {"segmentation": self.segmentation(h), "degradation": self.degradation(eighth.mean((2, 3)))[:, 0]}


def pair_classes(object_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The segmentation target: each pixel's class, 0 for the background and 1 + 5 shape +
    colour for a pixel of an object (`object_map` and `labels` as `Scene` stores them).

    >>> object_map = np.array([[0, 1], [2, 2]])
    >>> labels = np.array([[0, 0, 0, 0, 1], [2, 4, 1, 1, 0], [-1] * 5])  # a red circle, a purple triangle
    >>> pair_classes(object_map, labels).tolist()
    [[0, 1], [15, 15]]
    """
    lookup = np.zeros(len(labels) + 1, dtype=np.int64)
    lookup[1:] = np.where(labels[:, 0] >= 0, 1 + labels[:, 0] * len(COLOURS) + labels[:, 1], 0)
    return lookup[object_map]


def wanted(pairs, batch: int = 1) -> torch.Tensor:
    """`class_labels` for classifier guidance towards a scene holding these (shape, colour)
    pairs, by name: (batch, 3, 5), 1 where a pair is wanted. `SceneClassifier` is
    multi-label, so the guidance raises sum_k y_k log sigmoid(logit_k)
    (`sdxl_edu.sampling.guidance.classifier_log_prob`).

    >>> y = wanted([("circle", "red"), ("square", "blue")], batch=2)
    >>> tuple(y.shape), y.sum().item(), y[0, SHAPES.index("square"), list(COLOURS).index("blue")].item()
    ((2, 3, 5), 4.0, 1.0)
    """
    out = torch.zeros(batch, len(SHAPES), len(COLOURS))
    for shape, colour in pairs:
        out[:, SHAPES.index(shape), list(COLOURS).index(colour)] = 1
    return out


def presence(labels: np.ndarray) -> np.ndarray:
    """(B, 3, 5) targets for `SceneClassifier`: 1 where a scene names an object of that shape
    and colour (at least half of it visible), from (B, objects, 5) labels.

    >>> labels = np.array([[[0, 0, 0, 0, 1], [2, 4, 1, 1, 0], [-1] * 5]])  # the triangle is cut off
    >>> p = presence(labels); p[0, 0, 0].item(), p[0, 2, 4].item(), p.sum().item()
    (1.0, 0.0, 1.0)
    """
    out = np.zeros((len(labels), len(SHAPES), len(COLOURS)), dtype=np.float32)
    for i, scene in enumerate(labels):
        for shape, colour, _, _, named in scene:
            if shape >= 0 and named:
                out[i, shape, colour] = 1
    return out


def load_weights(model: nn.Module, path) -> nn.Module:
    """An exported classifier's fp16 safetensors into `model`, in float32, frozen."""
    import safetensors.torch
    model.load_state_dict({k: v.float() for k, v in safetensors.torch.load_file(str(path)).items()})
    return model.eval().requires_grad_(False)


def load_evaluator(path=EVALUATOR_FILE) -> SceneEvaluator:
    """The shipped evaluator (or an exported one), frozen."""
    return load_weights(SceneEvaluator(), path)


def load_classifier(path=CLASSIFIER_FILE) -> SceneClassifier:
    """The shipped noise-aware classifier (or an exported one), frozen: for classifier
    guidance with `wanted(pairs)` as `class_labels`."""
    return load_weights(SceneClassifier(), path)
