"""Reading every object of a nano SDXL 2 picture: what the benchmark and the lessons measure with.

Two readers, and neither ever trains or guides the generator:

- the evaluator's reading (`read_objects`): `SceneEvaluator` labels each cell of a quarter-
  resolution grid as background or one of the 15 (shape, colour) pairs; each connected blob
  of one label (`blobs`) is an object, with its position word from its centroid
  (`position_of`, as the captions were written) and its size word from its extent;
- pixel rules that need no model (`saturated_pixels`): nano's objects are saturated colours
  and its backgrounds are not, so the saturated pixels inside an object's blob give its
  silhouette, hence how round a circle is (`roundness`: bounding-box fill pi / 4 = 0.785
  and aspect 1 for a true circle), and saturated blobs too small to be an object are
  specks (`specks`).

Pictures are PIL images or (H, W, 3) arrays in 0..255.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import COLOURS, SHAPES, SIZES, position_of
from .metrics import saturated_pixels, to_tensor

SMALLEST_OBJECT_CELLS = 6  # in the evaluator's quarter-resolution grid: a small object covers ~50
SPECK_PIXELS = 30  # a saturated blob smaller than this is a speck: a small object has ~800 pixels


@dataclass
class ReadObject:
    shape: str
    colour: str
    position: str
    size: str
    mask: np.ndarray  # (H, W) bool: the blob's cells, at the picture's resolution


def blobs(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected blobs of a (H, W) bool mask, largest first. Every pixel starts with its
    own label and takes the largest among its neighbours until nothing changes.

    >>> m = np.zeros((5, 5), bool); m[:2, :2] = True; m[4, 4] = True
    >>> [int(b.sum()) for b in blobs(m)]
    [4, 1]
    """
    inside = torch.from_numpy(mask).float()[None, None]
    labels = torch.arange(1, mask.size + 1, dtype=torch.float32).view(inside.shape) * inside
    while True:
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * inside
        if torch.equal(grown, labels):
            break
        labels = grown
    labels = labels[0, 0].long().numpy()
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return [labels == i for i in ids[np.argsort(-counts, kind="stable")]]


def size_word(mask: np.ndarray) -> str:
    """'small' or 'large' from the object's extent: the longer side of its bounding box against
    the picture's short side. nano draws small objects a quarter of it across and large ones
    half, so the boundary is their geometric mean, 0.354.

    >>> m = np.zeros((128, 128), bool); m[10:42, 10:42] = True
    >>> size_word(m)
    'small'
    """
    ys, xs = np.nonzero(mask)
    extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    return SIZES[int(extent / min(mask.shape) > 0.5 * 2**-0.5)]


@torch.no_grad()
def read_objects(evaluator, images) -> list[list[ReadObject]]:
    """Every object the evaluator sees in each picture, largest first."""
    x = to_tensor(images)
    cells = evaluator(x)["segmentation"].argmax(1).numpy()  # (B, H/4, W/4): 0 background, 1 + 5 shape + colour
    scale = x.shape[-1] // cells.shape[-1]
    pictures = []
    for grid in cells:
        found = []
        for label in np.unique(grid[grid > 0]):
            shape, colour = SHAPES[(label - 1) // len(COLOURS)], list(COLOURS)[(label - 1) % len(COLOURS)]
            for blob in blobs(grid == label):
                if blob.sum() >= SMALLEST_OBJECT_CELLS:
                    mask = blob.repeat(scale, 0).repeat(scale, 1)
                    found.append(ReadObject(shape, colour, position_of(mask), size_word(mask), mask))
        pictures.append(sorted(found, key=lambda o: -o.mask.sum()))
    return pictures


def roundness(image, mask: np.ndarray) -> tuple[float, float]:
    """(bounding-box fill, aspect) of the saturated pixels inside an object's blob (grown by
    4 pixels, the evaluator's cell): pi / 4 = 0.785 and 1 for a true circle.

    >>> from PIL import Image, ImageDraw
    >>> im = Image.new("RGB", (64, 64), (235, 235, 230)); ImageDraw.Draw(im).ellipse((10, 10, 49, 49), (220, 40, 40))
    >>> [round(v, 2) for v in roundness(im, np.ones((64, 64), bool))]
    [0.78, 1.0]
    """
    region = F.max_pool2d(torch.from_numpy(mask).float()[None, None], 9, stride=1, padding=4)[0, 0].numpy() > 0
    silhouette = saturated_pixels([image])[0] & region
    ys, xs = np.nonzero(silhouette)
    if len(ys) == 0:
        return 0.0, 0.0
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    return float(len(ys) / (h * w)), float(w / h)


def specks(images) -> np.ndarray:
    """Per picture, how many saturated blobs smaller than `SPECK_PIXELS` it holds: strays that
    no object explains (a cut object's sliver at the frame counts too, so a picture's count
    is compared with the count on rendered training scenes, its control).

    >>> from PIL import Image
    >>> im = Image.new("RGB", (32, 32), (240, 235, 230)); im.paste((40, 80, 230), (4, 4, 20, 20))
    >>> im.putpixel((30, 1), (100, 255, 255))
    >>> specks([im]).tolist()
    [1]
    """
    return np.array([sum(b.sum() < SPECK_PIXELS for b in blobs(m)) for m in saturated_pixels(images)])
