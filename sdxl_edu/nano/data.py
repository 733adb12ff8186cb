"""nano SDXL's vocabulary and drawing primitives: shapes, colours, positions, sizes, the
words of the captions, how a shape is rasterised and a background painted, where an object
lies, and how a picture is degraded for the refiner.

The dataset itself, scenes of one to three objects through SDXL's resize-and-crop pipeline
with every fact about them recorded, is `sdxl_edu.nano.scenes`.

>>> make_caption(np.random.default_rng(0), "circle", "red", "left", "small")
'a small red circle on the left'
>>> set(make_caption(np.random.default_rng(1), "square", "blue", "top", "large").split()) <= set(VOCABULARY)
True
"""

import numpy as np
from PIL import Image, ImageFilter

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230), "yellow": (235, 210, 40),
           "purple": (150, 50, 200)}
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "center": "in the center"}
VOCABULARY = ["a", *SIZES, *COLOURS, *SHAPES, "on", "at", "in", "the", *POSITIONS, "blurry", "sharp", "cut", "off",
              "and", "photo", "of", "shape"]
SUPERSAMPLE = 4  # rendering resolution factor, for anti-aliased edges



def background(rng, h: int, w: int) -> np.ndarray:
    """A light, slightly tinted background; sometimes two tones split along one axis."""
    def tint():
        return 232 + rng.uniform(-18, 18, 3)
    bg = np.broadcast_to(tint(), (h, w, 3)).copy()
    if rng.random() < 0.3:
        if rng.random() < 0.5:
            bg[int(rng.uniform(0.2, 0.8) * h):] = tint()
        else:
            bg[:, int(rng.uniform(0.2, 0.8) * w):] = tint()
    return bg


def shape_mask(shape: str, h: int, w: int, cy: float, cx: float, size: float) -> np.ndarray:
    """Anti-aliased coverage (h, w) in [0, 1] of an upright filled shape of the given size
    (diameter, side, or base = height) centred at (cy, cx), all in pixels (`coverage`)."""
    return coverage(shape, h, w, cy, cx, size)


def coverage(shape: str, h: int, w: int, cy: float, cx: float, size: float) -> np.ndarray:
    """Anti-aliased coverage (h, w) in [0, 1] of an upright filled shape (diameter, side, or
    base = height `size`) centred at (cy, cx), in pixels. Only the shape's bounding box is
    supersampled, so a large picture costs what its object does.

    >>> c = coverage("square", 8, 8, 4.0, 4.0, 4.0)
    >>> float(c.sum()), float(c[2:6, 2:6].min())
    (16.0, 1.0)
    """
    r = size / 2
    y0, y1 = max(0, int(cy - r) - 1), min(h, int(np.ceil(cy + r)) + 1)
    x0, x1 = max(0, int(cx - r) - 1), min(w, int(np.ceil(cx + r)) + 1)
    out = np.zeros((h, w))
    if y1 <= y0 or x1 <= x0:
        return out
    s = SUPERSAMPLE
    yy, xx = np.meshgrid(y0 + (np.arange((y1 - y0) * s) + 0.5) / s, x0 + (np.arange((x1 - x0) * s) + 0.5) / s,
                         indexing="ij")
    if shape == "circle":
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    elif shape == "square":
        inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    else:  # triangle, apex up: at height v above the base, the half-width is r (1 - v / size)
        v = (cy + r) - yy
        inside = (v >= 0) & (v <= size) & (np.abs(xx - cx) <= r * (1 - v / size))
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))
    return out


def position_of(mask: np.ndarray) -> str:
    """The position word for an object mask: centre if the centroid is near the middle,
    else the side it is displaced towards (the larger of the two displacements)."""
    ys, xs = np.nonzero(mask)
    dy, dx = ys.mean() / mask.shape[0] - 0.5, xs.mean() / mask.shape[1] - 0.5
    if max(abs(dy), abs(dx)) < 0.12:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


REGIONS = {"left": ((0.35, 0.65), (0.0, 0.3)), "right": ((0.35, 0.65), (0.7, 1.0)),
           "top": ((0.0, 0.3), (0.35, 0.65)), "bottom": ((0.7, 1.0), (0.35, 0.65)),
           "center": ((0.44, 0.56), (0.44, 0.56))}  # where a framed original puts the object's centre


def make_caption(rng, shape: str, colour: str, position: str, size: str) -> str:
    """'a small red circle on the left', with each attribute but the shape sometimes left out
    so that partial prompts ('a circle', 'a blue square') are in the data too."""
    words = ["a"]
    if rng.random() < 0.7:
        words.append(size)
    if rng.random() < 0.8:
        words.append(colour)
    words.append(shape)
    if rng.random() < 0.7:
        words.append(PHRASES[position])
    return " ".join(words)


def degrade(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Blur, noise or blocky compression of strength `level` in [0, 1]: what nano's
    aesthetic score measures (`aesthetic_score`)."""
    level = float(level)
    if level <= 0:
        return image
    kind = rng.integers(3)
    im = image.astype(np.float32)
    if kind == 0:
        im = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.3 + 1.7 * level)), np.float32)
    elif kind == 1:
        im = im + rng.normal(0, 40 * level, im.shape)
    else:  # average over blocks of 2 or 4 pixels and quantise the colours
        b = 2 if level < 0.5 else 4
        h, w = im.shape[0] // b * b, im.shape[1] // b * b
        blocks = im[:h, :w].reshape(h // b, b, w // b, b, 3).mean(axis=(1, 3))
        im[:h, :w] = np.repeat(np.repeat(blocks, b, 0), b, 1)
        step = 8 + 40 * level
        im = np.round(im / step) * step
    return im.clip(0, 255).astype(np.uint8)


def aesthetic_score(level: float) -> float:
    """The score nano's refiner is conditioned on: 6.5 for a clean picture, down to 1.5.

    >>> aesthetic_score(0.0), aesthetic_score(0.8)
    (6.5, 2.5)
    """
    return round(6.5 - 5.0 * level, 6)
