"""nano SDXL 2's dataset: scenes of one to three coloured shapes, every fact about each known.

A scene is a "photograph" of one to three objects (a circle, square or triangle in one of
five colours, small or large), none overlapping another (touching is allowed), on a light
background. It goes through SDXL's data pipeline (SDXL paper, sections 2.2 and 2.3) as the
single objects of `sdxl_edu.nano.data` do:

1. the *original* is rendered at a random size (its short side a quarter of the bucket's up
   to twice it) and aspect; small originals are genuinely low-resolution;
2. it is resized to cover the training bucket and cropped there at random;
3. `original_size`, `crop_top_left` and `target_size` are recorded, height first.

Half of the originals are framed to the bucket with each object placed in the region of a
chosen position word; half are wider or taller, their objects near the middle, so that the
crop is what moves or cuts them. The caption is written after the crop: it names every
object at least half visible in the picture the model sees, in random order, joined by
"and", each with its position in that picture and its attributes left out at random, as
`make_caption` does for one object:

    "a small red circle on the left and a blue square"

Every object keeps its ground truth: shape, colour, size, position, how much of it the crop
shows, and its pixels (`Scene.object_map`: 0 for the background, k for the k-th object).

>>> rng = np.random.default_rng(0)
>>> s = make_scene(rng, (128, 128))
>>> s.image.shape, s.object_map.shape, len(s.objects) == int(s.object_map.max())
((128, 128, 3), (128, 128), True)
>>> from sdxl_edu.nano.data import VOCABULARY
>>> set(s.caption.split()) <= set(VOCABULARY), s.caption.count(" and ") + 1 == sum(o.named for o in s.objects)
(True, True)
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .data import COLOURS, PHRASES, POSITIONS, REGIONS, SHAPES, SIZES, background, coverage, make_caption, \
    position_of

BUCKETS = ((128, 128), (96, 160), (160, 96))  # (height, width): 16 x 16, 12 x 20 and 20 x 12 latents at f = 8
OBJECT_COUNTS = {1: 0.3, 2: 0.4, 3: 0.3}  # how many objects an original holds, and how often
MAX_OBJECTS = max(OBJECT_COUNTS)
LABELS = ("shape", "colour", "position", "size", "named")  # the columns of `Scene.labels`


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str  # from its pixels in the final crop
    visible: float  # the fraction of the object that the crop shows
    named: bool  # in the caption: at least half of it is visible


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8, the picture the model is trained on
    object_map: np.ndarray  # (H, W) uint8: 0 background, k the pixels of objects[k - 1]
    objects: list[SceneObject]
    caption: str
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]
    framed: bool

    @property
    def labels(self) -> np.ndarray:
        """(MAX_OBJECTS, 5) ints, one row per object (shape, colour, position, size as indices
        into SHAPES, COLOURS, POSITIONS, SIZES; named 0 or 1), -1 where there is no object."""
        rows = np.full((MAX_OBJECTS, len(LABELS)), -1, dtype=np.int8)
        for i, o in enumerate(self.objects):
            rows[i] = (SHAPES.index(o.shape), list(COLOURS).index(o.colour), POSITIONS.index(o.position),
                       SIZES.index(o.size), o.named)
        return rows


def apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Whether two objects' bounding boxes, (cy, cx, half-size) each, do not overlap
    (touching is allowed).

    >>> apart((10, 10, 5), (10, 20, 5)), apart((10, 10, 5), (12, 19, 5))
    (True, False)
    """
    return abs(a[0] - b[0]) >= a[2] + b[2] or abs(a[1] - b[1]) >= a[2] + b[2]


def original_frame(rng, bucket: tuple[int, int], framed: bool) -> tuple[int, int]:
    """The original's (height, width): its short side a quarter of the bucket's up to twice
    it; framed to the bucket's aspect, or stretched 1.3 to 2.2 times along one side."""
    bh, bw = bucket
    short = min(bh, bw) * np.exp(rng.uniform(np.log(0.25), np.log(2.0)))
    oh, ow = short * bh / min(bh, bw), short * bw / min(bh, bw)
    if not framed:
        stretch = rng.uniform(1.3, 2.2)
        oh, ow = (oh, ow * stretch) if rng.random() < 0.5 else (oh * stretch, ow)
    return max(8, round(oh)), max(8, round(ow))


def place(rng, oh: int, ow: int, r: float, framed: bool, margin: float) -> tuple[float, float]:
    """A centre for an object of half-size r: in a framed original, in the region of a
    position word chosen at random (so every word occurs uncropped) and `margin` pixels
    clear of the frame; otherwise near the middle along the long side, anywhere across it."""
    if framed:
        (y0, y1), (x0, x1) = REGIONS[rng.choice(POSITIONS)]
        m = r + margin
        return float(np.clip(rng.uniform(y0, y1) * oh, m, oh - m)), float(np.clip(rng.uniform(x0, x1) * ow, m, ow - m))
    jitter_y, jitter_x = (0.45, 0.2) if ow > oh else (0.2, 0.45)
    return (float(np.clip(oh / 2 + rng.uniform(-jitter_y, jitter_y) * oh, r + 0.5, oh - r - 0.5)),
            float(np.clip(ow / 2 + rng.uniform(-jitter_x, jitter_x) * ow, r + 0.5, ow - r - 0.5)))


def draw_objects(rng, bucket: tuple[int, int], oh: int, ow: int, framed: bool) -> list[dict]:
    """One to three objects with their centres and sizes in the original's pixels, none
    overlapping another; an object that finds no room in 30 tries is left out. Sizes are set
    in the final picture: a quarter (small) or half (large) of the bucket's short side."""
    scale = max(bucket[0] / oh, bucket[1] / ow)  # the resize that makes the original cover the bucket
    n = rng.choice(list(OBJECT_COUNTS), p=list(OBJECT_COUNTS.values()))
    objects = []
    for _ in range(n):
        shape, colour, size_word = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES)
        size = min(bucket) * (0.25 if size_word == "small" else 0.5) * rng.uniform(0.9, 1.1) / scale
        for _ in range(30):
            cy, cx = place(rng, oh, ow, size / 2, framed, margin=3 / scale + 0.5)
            if all(apart((cy, cx, size / 2), (o["cy"], o["cx"], o["size"] / 2)) for o in objects):
                objects.append(dict(shape=shape, colour=colour, size_word=size_word, size=size, cy=cy, cx=cx))
                break
    return objects


def render(rng, oh: int, ow: int, objects: list[dict]) -> np.ndarray:
    """The original (oh, ow, 3) float picture: background, then each object in its colour
    (jittered by up to 12 levels per channel), anti-aliased."""
    picture = background(rng, oh, ow)
    for o in objects:
        rgb = np.array(COLOURS[o["colour"]]) + rng.uniform(-12, 12, 3)
        c = coverage(o["shape"], oh, ow, o["cy"], o["cx"], o["size"])[..., None]
        picture = picture * (1 - c) + rgb * c
    return picture


def make_scene(rng: np.random.Generator, bucket: tuple[int, int], caption_dropout: float = 0.0) -> Scene:
    """One training scene for a bucket (height, width), through SDXL's resize and crop."""
    bh, bw = bucket
    framed = bool(rng.random() < 0.5)
    oh, ow = original_frame(rng, bucket, framed)
    objects = draw_objects(rng, bucket, oh, ow, framed)
    original = render(rng, oh, ow, objects)

    # SDXL's pipeline: resize to cover the bucket, then a random crop
    rh, rw = max(bh, round(oh * max(bh / oh, bw / ow))), max(bw, round(ow * max(bh / oh, bw / ow)))
    if framed:  # framed to the bucket: rounding the original's sides must not leave a crop
        rh, rw = bh, bw
    resized = np.asarray(Image.fromarray(original.clip(0, 255).astype(np.uint8)).resize((rw, rh), Image.BICUBIC))
    masks = [coverage(o["shape"], rh, rw, o["cy"] * rh / oh, o["cx"] * rw / ow, o["size"] * rh / oh) > 0.5
             for o in objects]
    for _ in range(20):  # keep a crop that shows at least half of some object
        top, left = int(rng.integers(0, rh - bh + 1)), int(rng.integers(0, rw - bw + 1))
        seen = [m[top:top + bh, left:left + bw].sum() / max(1, m.sum()) for m in masks]
        if max(seen) >= 0.5:
            break

    object_map = np.zeros((bh, bw), dtype=np.uint8)
    scene_objects = []
    for o, m, v in zip(objects, masks, seen):
        crop = m[top:top + bh, left:left + bw]
        object_map[crop] = len(scene_objects) + 1
        scene_objects.append(SceneObject(o["shape"], o["colour"], o["size_word"],
                                         position_of(crop) if crop.any() else "center", float(v), bool(v >= 0.5)))
    caption = "" if rng.random() < caption_dropout else scene_caption(rng, scene_objects)
    return Scene(resized[top:top + bh, left:left + bw].copy(), object_map, scene_objects, caption, (oh, ow),
                 (top, left), (bh, bw), framed)


def small_and_large_originals(n: int, seed: int = 123) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The square bucket's first `n` scenes, drawn from `seed`, whose original's short side is
    at most 40 px (upscaled to 128, so blurred), and its first `n` of at least 128 px (sharp):
    the two ends of what SDXL's size conditioning tells apart.

    >>> small, large = small_and_large_originals(2)
    >>> len(small), len(large), small[0].shape
    (2, 2, (128, 128, 3))
    """
    rng, small, large = np.random.default_rng(seed), [], []
    while len(small) < n or len(large) < n:
        scene = make_scene(rng, BUCKETS[0])
        short = min(scene.original_size)
        if short <= 40 and len(small) < n:
            small.append(scene.image)
        elif short >= 128 and len(large) < n:
            large.append(scene.image)
    return small, large


def scene_caption(rng, objects: list[SceneObject]) -> str:
    """The named objects in random order, joined by "and", each described as `make_caption`
    describes one (its size, colour and position each left out at random).

    >>> o = [SceneObject("circle", "red", "small", "left", 1.0, True), SceneObject("square", "blue", "large",
    ...      "right", 0.3, False), SceneObject("triangle", "green", "large", "top", 0.9, True)]
    >>> scene_caption(np.random.default_rng(1), o)  # the square is cut off: unnamed
    'a red circle and a large green triangle'
    """
    named = [o for o in objects if o.named]
    order = rng.permutation(len(named))
    return " and ".join(make_caption(rng, named[i].shape, named[i].colour, named[i].position, named[i].size)
                        for i in order)


def captions_from_labels(rng, labels: np.ndarray) -> str:
    """A fresh caption for a scene's stored labels (a `Scene.labels` array), as `scene_caption`
    writes one: training draws new captions every time it sees a picture.

    >>> labels = np.array([[0, 0, 0, 0, 1], [1, 2, 1, 1, 1], [-1, -1, -1, -1, -1]])
    >>> captions_from_labels(np.random.default_rng(0), labels)
    'a small red circle on the left and a square on the right'
    """
    objects = [SceneObject(SHAPES[s], list(COLOURS)[c], SIZES[z], POSITIONS[p], 1.0, bool(n))
               for s, c, p, z, n in labels if s >= 0]
    return scene_caption(rng, objects)


def parse_caption(caption: str) -> list[dict]:
    """The objects a caption names, each a dict of shape, colour, size and position (None
    where the caption leaves it out).

    >>> parse_caption("a small red circle on the left and a square")
    [{'shape': 'circle', 'colour': 'red', 'size': 'small', 'position': 'left'}, \
{'shape': 'square', 'colour': None, 'size': None, 'position': None}]
    """
    objects = []
    for phrase in caption.split(" and "):
        words = phrase.split()
        objects.append({"shape": next(w for w in words if w in SHAPES),
                        "colour": next((w for w in words if w in COLOURS), None),
                        "size": next((w for w in words if w in SIZES), None),
                        "position": next((p for p in POSITIONS if PHRASES[p] in phrase), None)})
    return objects


def render_caption(rng, caption: str, bucket: tuple[int, int] = BUCKETS[0], tries: int = 2000) -> Scene:
    """A scene that shows exactly what the caption says, uncropped: each named object in its
    colour, size and position, whatever the caption leaves out drawn at random. The truthful
    generator against which the benchmark's reading is checked.

    >>> s = render_caption(np.random.default_rng(0), "a red circle on the left and a blue square")
    >>> [(o.shape, o.colour, o.position) for o in s.objects][0]
    ('circle', 'red', 'left')
    """
    wanted = parse_caption(caption)
    bh, bw = bucket
    for _ in range(tries):
        objects = []
        for w in wanted:
            size_word = w["size"] or rng.choice(SIZES)
            size = min(bucket) * (0.25 if size_word == "small" else 0.5) * rng.uniform(0.9, 1.1)
            (y0, y1), (x0, x1) = REGIONS[w["position"] or rng.choice(POSITIONS)]
            m = size / 2 + 3.5
            cy, cx = float(np.clip(rng.uniform(y0, y1) * bh, m, bh - m)), float(np.clip(rng.uniform(x0, x1) * bw, m, bw - m))
            objects.append(dict(shape=w["shape"], colour=w["colour"] or rng.choice(list(COLOURS)), size_word=size_word,
                                size=size, cy=cy, cx=cx))
        if not all(apart((a["cy"], a["cx"], a["size"] / 2), (b["cy"], b["cx"], b["size"] / 2))
                   for i, a in enumerate(objects) for b in objects[i + 1:]):
            continue
        masks = [coverage(o["shape"], bh, bw, o["cy"], o["cx"], o["size"]) > 0.5 for o in objects]
        if all(w["position"] in (None, position_of(m)) for w, m in zip(wanted, masks)):
            break
    else:
        raise ValueError(f"no room for {caption!r} in {bucket} after {tries} tries")
    image = render(rng, bh, bw, objects).clip(0, 255).astype(np.uint8)
    object_map = np.zeros((bh, bw), dtype=np.uint8)
    for k, m in enumerate(masks, 1):
        object_map[m] = k
    scene_objects = [SceneObject(o["shape"], o["colour"], o["size_word"], position_of(m), 1.0, True)
                     for o, m in zip(objects, masks)]
    return Scene(image, object_map, scene_objects, caption, (bh, bw), (0, 0), (bh, bw), True)
