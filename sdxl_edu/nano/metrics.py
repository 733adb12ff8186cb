"""Pixel rules: what can be measured in nano's pictures without any model.

nano's objects are saturated colours on pale, unsaturated backgrounds, so simple statistics
say a lot: saturation (how strongly coloured a picture is), high-frequency energy (how
sharp), the saturated pixels and their largest blob (an object's mask), whether a mask
touches the frame (cut by the crop) and whether an attention map peaks inside it (the
pointing game). The evaluator's reading of every object is `sdxl_edu.nano.scene_reading`.
Neither is ever used to train the generator.

Pictures are PIL images, as the pipeline returns them (the saturation measures also take
(H, W, 3) arrays in 0..255).
"""

import numpy as np
import torch


def to_tensor(images) -> torch.Tensor:
    """PIL pictures -> (B, 3, H, W) in [-1, 1].

    >>> from PIL import Image
    >>> x = to_tensor([Image.new("RGB", (80, 48), (255, 0, 0))])
    >>> tuple(x.shape), x[0, :, 0, 0].tolist()
    ((1, 3, 48, 80), [1.0, -1.0, -1.0])
    """
    return torch.from_numpy(np.stack([np.asarray(im, np.float32) for im in images])).permute(0, 3, 1, 2) / 127.5 - 1



def saturation(images) -> float:
    """Mean HSV saturation, (max - min) / max over the channels: 0 for greys, 1 for pure hues.
    Strong guidance pushes colours towards it (lesson 3).

    >>> from PIL import Image
    >>> saturation([Image.new("RGB", (4, 4), (200, 200, 200))]), saturation([Image.new("RGB", (4, 4), (200, 0, 0))])
    (0.0, 1.0)
    """
    a = np.stack([np.asarray(im, np.float32) / 255 for im in images])
    return float(((a.max(-1) - a.min(-1)) / (a.max(-1) + 1e-6)).mean())


def high_frequency_energy(images) -> float:
    """Mean squared Laplacian: how much fine detail (sharp edges) the pictures hold.

    >>> from PIL import Image
    >>> flat = Image.new("RGB", (16, 16), (128, 128, 128))
    >>> checks = Image.fromarray((np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    >>> high_frequency_energy([flat]), high_frequency_energy([checks])  # a Laplacian of +-4 at every pixel
    (0.0, 16.0)
    """
    a = np.stack([np.asarray(im.convert("L"), np.float32) / 255 for im in images])
    lap = 4 * a[:, 1:-1, 1:-1] - a[:, :-2, 1:-1] - a[:, 2:, 1:-1] - a[:, 1:-1, :-2] - a[:, 1:-1, 2:]
    return float((lap**2).mean())


def saturated_pixels(images) -> np.ndarray:
    """Per picture (PIL or (H, W, 3) array, 0..255), its saturated pixels: the spread between
    the largest and smallest channel above 80. nano's shapes are saturated colours; its light,
    barely tinted backgrounds are not.

    >>> from PIL import Image
    >>> im = Image.new("RGB", (2, 1), (240, 235, 230)); im.putpixel((1, 0), (40, 80, 230))
    >>> saturated_pixels([im]).tolist()  # background, blue
    [[[False, True]]]
    """
    a = np.stack([np.asarray(im, np.float32) for im in images])
    return (a.max(-1) - a.min(-1)) > 80


def object_mask(images) -> np.ndarray:
    """Object pixels: the largest connected blob of saturated pixels. The blob test leaves out
    the few saturated pixels nano's decoder sometimes puts in a corner (a cyan speck at the top
    right, in about 5% of its reconstructions of training pictures), which would otherwise read
    as an object touching the frame.

    >>> from PIL import Image
    >>> im = Image.new("RGB", (8, 8), (240, 235, 230)); im.paste((40, 80, 230), (2, 2, 5, 4))
    >>> im.putpixel((7, 0), (100, 255, 255))  # a speck in the corner
    >>> int(object_mask([im]).sum())  # the 3 x 2 blue rectangle: not the background, not the speck
    6
    """
    return largest_blob(saturated_pixels(images))


def largest_blob(masks: np.ndarray) -> np.ndarray:
    """Per mask (B, H, W), only its largest 8-connected blob. Every pixel starts with its own
    label and takes the largest label among its neighbours until nothing changes: each blob
    ends up labelled by its largest pixel index.

    >>> m = np.zeros((1, 5, 5), bool); m[0, :2, :2] = True; m[0, 4, 4] = True
    >>> largest_blob(m).astype(int)[0, :, [0, 1, 4]].tolist()  # columns 0, 1 and 4
    [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    """
    inside = torch.from_numpy(masks).float()[:, None]
    labels = torch.arange(1, inside[0].numel() + 1, dtype=torch.float32).view(inside.shape[1:]) * inside
    while True:
        grown = torch.nn.functional.max_pool2d(labels, 3, stride=1, padding=1) * inside
        if torch.equal(grown, labels):
            break
        labels = grown
    labels = labels[:, 0].long().flatten(1)
    keep = [torch.bincount(row[row > 0]).argmax() if (row > 0).any() else -1 for row in labels]
    return (labels == torch.tensor(keep)[:, None]).view(masks.shape).numpy()


def touches_frame(masks: np.ndarray, sides: str = "top left bottom right") -> np.ndarray:
    """Per mask (B, H, W): does the object reach one of the named edges of the picture?

    >>> m = np.zeros((2, 8, 8), bool); m[0, 0, 3] = True; m[1, 4, 7] = True
    >>> touches_frame(m).tolist(), touches_frame(m, "top left").tolist()
    ([True, True], [True, False])
    """
    edges = {"top": masks[:, 0, :], "bottom": masks[:, -1, :], "left": masks[:, :, 0], "right": masks[:, :, -1]}
    return np.any([edges[side].any(-1) for side in sides.split()], axis=0)


def present(masks: np.ndarray, min_pixels: int = 20) -> np.ndarray:
    """Per mask: is there an object at all (more than a few object pixels)?

    >>> masks = np.zeros((2, 8, 8), bool); masks[1, 2:7, 2:7] = True  # nothing, and 25 pixels
    >>> present(masks).tolist()
    [False, True]
    """
    return masks.sum((1, 2)) > min_pixels


def peak_inside(heat: torch.Tensor, mask: np.ndarray) -> bool:
    """The pointing game for one picture: does the heat map (h, w), upsampled to the mask's
    size, peak on the object?

    >>> heat = torch.zeros(4, 4); heat[0, 0] = 1
    >>> mask = np.zeros((8, 8), bool); mask[:2, :2] = True
    >>> peak_inside(heat, mask), peak_inside(heat, ~mask)
    (True, False)
    """
    heat = torch.nn.functional.interpolate(heat[None, None].float(), size=mask.shape, mode="bilinear")[0, 0]
    return bool(mask.flat[int(heat.argmax())])
