"""The nano SDXL dataset: one coloured shape per picture, every fact about it known.

Each sample goes through SDXL's data pipeline (SDXL paper, sections 2.2 and 2.3):

1. an *original* picture is rendered at a random size (its short side a quarter of the
   bucket's up to twice it) and aspect; small originals are genuinely low-resolution;
2. it is resized so that it covers the training bucket (small originals are upscaled and
   come out blurry), then cropped at random to the bucket;
3. `original_size`, `crop_top_left` and `target_size` (the bucket) are recorded in pixels,
   height first, exactly what the UNet is later told.

The caption is written *after* the crop, from where the object really lies in the picture
the model sees: a caption written before the crop would teach the model that position
words mean nothing.

Originals are "photographs" of two kinds. Half are framed to the bucket's aspect with the
object placed in a chosen region (so every position word occurs uncropped); half are wider
or taller than the bucket with the object near the middle, as a photographer frames a
subject, so that the random crop is what moves or cuts it: a large crop offset means the
object was cut at the top or left, which is the effect crop conditioning learns.

>>> rng = np.random.default_rng(0)
>>> s = make_sample(rng, (64, 64))
>>> s.image.shape, s.mask.shape, s.target_size
((64, 64, 3), (64, 64), (64, 64))
>>> caption_words = set(s.caption.split()); caption_words <= set(VOCABULARY)
True
"""

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230), "yellow": (235, 210, 40),
           "purple": (150, 50, 200)}
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "center": "in the center"}
BUCKETS = ((64, 64), (48, 80), (80, 48))  # (height, width): the square and two of about the same area
VOCABULARY = ["a", *SIZES, *COLOURS, *SHAPES, "on", "at", "in", "the", *POSITIONS, "blurry", "sharp", "cut", "off",
              "and", "photo", "of", "shape"]
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "position": POSITIONS, "size": SIZES}
SUPERSAMPLE = 4  # rendering resolution factor, for anti-aliased edges


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8, the picture the model is trained on
    mask: np.ndarray  # (H, W) bool, the object's pixels in it
    caption: str
    labels: dict  # shape, colour, position, size: indices into ATTRIBUTES
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]
    extra: dict = field(default_factory=dict)


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


def make_sample(rng: np.random.Generator, bucket: tuple[int, int], caption_dropout: float = 0.0) -> Sample:
    """One training sample for a bucket (height, width), through SDXL's resize and crop."""
    bh, bw = bucket
    shape, colour, size_word = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES)
    framed = rng.random() < 0.5
    # the original: short side from a quarter of the bucket's to twice it
    short = min(bh, bw) * np.exp(rng.uniform(np.log(0.25), np.log(2.0)))
    if framed:
        oh, ow = short * bh / min(bh, bw), short * bw / min(bh, bw)
    else:  # wider or taller than the bucket
        stretch = rng.uniform(1.3, 2.2)
        oh, ow = (short * bh / min(bh, bw), short * bw / min(bh, bw))
        oh, ow = (oh, ow * stretch) if rng.random() < 0.5 else (oh * stretch, ow)
    oh, ow = max(8, round(oh)), max(8, round(ow))
    scale = max(bh / oh, bw / ow)  # resize factor that makes the original cover the bucket
    # object size is set in the *final* picture: a quarter / half of the bucket's short side
    size_final = min(bh, bw) * (0.25 if size_word == "small" else 0.5) * rng.uniform(0.9, 1.1)
    size = size_final / scale
    r = size / 2
    if framed:
        # a framed photograph shows the whole subject: keep 3 final pixels (and the
        # upscaling blur) between the object and the frame
        (y0, y1), (x0, x1) = REGIONS[rng.choice(POSITIONS)]
        margin = r + 3 / scale + 0.5
        cy = np.clip(rng.uniform(y0, y1) * oh, margin, oh - margin)
        cx = np.clip(rng.uniform(x0, x1) * ow, margin, ow - margin)
    else:  # near the middle along the axis the crop cuts (the long one), anywhere across it
        wide = ow / oh > bw / bh
        jitter_y, jitter_x = (0.25, 0.05) if wide else (0.05, 0.25)
        cy = np.clip(oh / 2 + rng.uniform(-jitter_y, jitter_y) * oh, r + 0.5, oh - r - 0.5)
        cx = np.clip(ow / 2 + rng.uniform(-jitter_x, jitter_x) * ow, r + 0.5, ow - r - 0.5)

    rgb = np.array(COLOURS[colour]) + rng.uniform(-12, 12, 3)
    coverage = shape_mask(shape, oh, ow, cy, cx, size)[..., None]
    original = background(rng, oh, ow) * (1 - coverage) + rgb * coverage

    # SDXL's pipeline: resize to cover the bucket, then a random crop
    rh, rw = max(bh, round(oh * scale)), max(bw, round(ow * scale))
    resized = np.asarray(Image.fromarray(original.clip(0, 255).astype(np.uint8)).resize((rw, rh), Image.BICUBIC))
    full_mask = shape_mask(shape, rh, rw, cy * rh / oh, cx * rw / ow, size * rh / oh) > 0.5
    for _ in range(20):  # keep crops that show at least half of the object
        top, left = int(rng.integers(0, rh - bh + 1)), int(rng.integers(0, rw - bw + 1))
        mask = full_mask[top:top + bh, left:left + bw]
        if mask.sum() >= 0.5 * full_mask.sum():
            break
    image = resized[top:top + bh, left:left + bw].copy()

    position = position_of(mask)
    labels = {"shape": SHAPES.index(shape), "colour": list(COLOURS).index(colour),
              "position": POSITIONS.index(position), "size": SIZES.index(size_word)}
    caption = "" if rng.random() < caption_dropout else make_caption(rng, shape, colour, position, size_word)
    return Sample(image, mask, caption, labels, (oh, ow), (top, left), (bh, bw),
                  {"cut": bool(mask.sum() < full_mask.sum()), "framed": bool(framed)})


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
