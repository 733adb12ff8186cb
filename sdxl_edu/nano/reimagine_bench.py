"""Measure nano Reimagine: `python -m sdxl_edu.nano.reimagine_bench [--scenes 60] [--seeds 4] [--json out.json]`.

A variation should keep what a picture's CLIP embedding says (which objects, their shapes
and colours) and not where they were, since the UNet never sees the picture's latents.
The inputs are held-out rendered scenes of one or two whole objects (`input_scenes`); the
variations are read by the evaluator (`scene_reading.read_objects`), which never trained
or guided a generator; every rate comes with its count and 95% Wilson interval. The
thresholds were written before any model was measured (issue 18):

| measure | target |
|---|---|
| faithful: every input object's shape and colour in the variation | >= 85% |
| (the same, apart for inputs of one and of two objects) | shown |
| layout changed: some input object moved by more than a quarter of the picture | >= 50% |
| the same two for img2img at strength 0.3, 0.6, 0.9 (the control) | shown beside |
| noise_level 0, 250, 500: faithfulness falls, diversity rises | monotone |
| guidance against the zero embedding: faithfulness above guidance 1 | higher |
| one variation, 20 steps with guidance, 2 CPU cores | < 1 s |

Diversity is the mean distance between two variations of the same picture (`diversity`).
The scored scenes start at seed 50,000 and the generation seeds at 1000; nothing was
chosen on them.
"""

import argparse
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

from .bench import SEED, phrase, rate, report
from .scene_reading import read_objects
from .scenes import BUCKETS, Scene, make_scene

SCENE_SEED = 50_000
MOVED = 0.25  # of the picture's side: how far an object must move for the layout to count as changed


def input_scenes(n: int, seed: int = SCENE_SEED) -> list[Scene]:
    """`n` held-out square scenes of one or two objects, each whole in the picture.

    >>> scenes = input_scenes(3)
    >>> [1 <= len(s.objects) <= 2 and all(o.visible == 1.0 for o in s.objects) for s in scenes]
    [True, True, True]
    """
    rng, scenes = np.random.default_rng(seed), []
    while len(scenes) < n:
        scene = make_scene(rng, BUCKETS[0])
        if len(scene.objects) <= 2 and all(o.visible == 1.0 for o in scene.objects):
            scenes.append(scene)
    return scenes


def by_objects(scenes: list[Scene]) -> dict[str, list[Scene]]:
    """The validation groups the probes score variations on: scenes of one object, and scenes of
    two objects distinct in shape and in colour (nothing to bind by elimination).

    >>> groups = by_objects(input_scenes(40, seed=60_000))
    >>> all(len({o.shape for o in s.objects}) == len({o.colour for o in s.objects}) == 2
    ...     for s in groups["two objects, distinct"])
    True
    """
    def distinct(scene: Scene) -> bool:
        a, b = scene.objects
        return a.shape != b.shape and a.colour != b.colour

    return {"one object": [s for s in scenes if len(s.objects) == 1],
            "two objects, distinct": [s for s in scenes if len(s.objects) == 2 and distinct(s)]}


def centre(mask: np.ndarray) -> np.ndarray:
    """The (y, x) centroid of a mask, as a fraction of the picture's side.

    >>> m = np.zeros((128, 128), bool); m[0:32, 96:128] = True  # a square in the top right corner
    >>> centre(m).round(3).tolist()
    [0.121, 0.871]
    """
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()]) / mask.shape[0]


def compare(scene: Scene, objects) -> tuple[bool, bool]:
    """(faithful, moved) for one picture read as `objects`, against the scene it varies:
    faithful when every object of the scene is read with its shape and colour; moved when
    some object's nearest reading of its shape and colour lies more than `MOVED` of the
    side away from where the object was.

    >>> from sdxl_edu.nano.scene_reading import ReadObject
    >>> scene = input_scenes(2)[1]  # a green square at the bottom
    >>> square = scene.object_map == 1
    >>> compare(scene, [ReadObject("square", "green", "bottom", "small", square)])
    (True, False)
    >>> compare(scene, [ReadObject("square", "green", "top", "small", np.roll(square, -64, axis=0))])
    (True, True)
    >>> compare(scene, [ReadObject("circle", "green", "bottom", "small", square)])
    (False, False)
    """
    faithful, moved = True, False
    for k, o in enumerate(scene.objects, 1):
        where = centre(scene.object_map == k)
        found = [r for r in objects if r.shape == o.shape and r.colour == o.colour]
        if not found:
            faithful = False
            continue
        moved |= bool(min(np.linalg.norm(centre(r.mask) - where) for r in found) > MOVED)
    return faithful, moved


def judge(evaluator, scenes: list[Scene], pictures: list[list]) -> dict:
    """Faithfulness and layout change over every picture of every scene (`pictures[i]`
    varies `scenes[i]`), their diversity, and faithfulness apart for inputs of one and of
    two objects (a miss may lie in binding two objects, not in varying one)."""
    faithful, moved, count = [], [], []
    for scene, images in zip(scenes, pictures):
        for objects in read_objects(evaluator, images):
            f, m = compare(scene, objects)
            faithful.append(f)
            moved.append(m)
            count.append(len(scene.objects))
    by_count = {f"{n}_object{'s' * (n > 1)}": rate([f for f, c in zip(faithful, count) if c == n])
                for n in sorted(set(count))}
    return {"faithful": rate(faithful), "layout_changed": rate(moved), "diversity": diversity(pictures),
            "faithful_by_objects": by_count}


def diversity(pictures: list[list]) -> float:
    """The mean, over scenes and over pairs of their pictures, of the RMS difference of the
    two pictures at 32 x 32 (0 identical, 1 black against white).

    >>> black, white = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 255, 255))
    >>> diversity([[black, white], [black, black]])
    0.5
    """
    def small(image):
        return np.asarray(Image.fromarray(np.asarray(image)).resize((32, 32), Image.BILINEAR), np.float32) / 255

    distances = [np.sqrt(np.mean((small(a) - small(b)) ** 2)) for images in pictures
                 for a, b in combinations(images, 2)]
    return round(float(np.mean(distances)), 3)


def variations(pipe, scenes: list[Scene], seeds: int, **kwargs) -> list[list]:
    """`seeds` variations of each scene's picture (20 steps), one generation per seed."""
    pictures = [[] for _ in scenes]
    images = [Image.fromarray(s.image) for s in scenes]
    for seed in range(SEED, SEED + seeds):
        out = pipe(images, seed=seed, num_inference_steps=20, progress=False, **kwargs).images
        for i, image in enumerate(out):
            pictures[i].append(image)
    return pictures


def img2img(base, scenes: list[Scene], seeds: int, strength: float) -> list[list]:
    """The control: the text model's img2img from each scene's picture and a caption naming
    every object's colour and shape, at `strength`."""
    prompts = [" and ".join(phrase(o.shape, o.colour) for o in s.objects) for s in scenes]
    images = [Image.fromarray(s.image) for s in scenes]
    pictures = [[] for _ in scenes]
    for seed in range(SEED, SEED + seeds):
        out = base(prompts, image=images, strength=strength, seed=seed, num_inference_steps=20, progress=False).images
        for i, image in enumerate(out):
            pictures[i].append(image)
    return pictures


def timing(pipe) -> dict:
    """Seconds for one variation, 20 steps with guidance, after a warm-up."""
    picture = Image.fromarray(input_scenes(1)[0].image)
    pipe(picture, num_inference_steps=20, seed=0, progress=False)
    start = time.perf_counter()
    pipe(picture, num_inference_steps=20, seed=0, progress=False)
    return {"one_variation_s": round(time.perf_counter() - start, 3)}


def main(argv=None) -> dict:
    """The command line: every measurement above, printed one line per group and returned
    (and written to `--json`)."""
    from ..loading import load_pipeline, load_variation_pipeline
    from . import BASE_FILE, EVALUATOR_FILE, WEIGHTS
    from .classifiers import load_evaluator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--weights", default=str(WEIGHTS), help="a folder of nano SDXL 2 and nano Reimagine files")
    parser.add_argument("--json", help="write the measurements here too")
    args = parser.parse_args(argv)
    folder = Path(args.weights)
    pipe = load_variation_pipeline(folder / "nano_reimagine.safetensors")
    base, evaluator = load_pipeline(folder / BASE_FILE.name), load_evaluator(folder / EVALUATOR_FILE.name)
    scenes = input_scenes(args.scenes)
    results = {"time": timing(pipe), "inputs_read_back": judge(evaluator, scenes, [[s.image] for s in scenes])}
    for level in (0, 250, 500):
        results[f"variations_noise_level_{level}"] = judge(evaluator, scenes,
                                                           variations(pipe, scenes, args.seeds, noise_level=level))
    results["variations_guidance_1"] = judge(evaluator, scenes, variations(pipe, scenes, args.seeds, guidance_scale=1.0))
    for strength in (0.3, 0.6, 0.9):
        results[f"img2img_strength_{strength:g}"] = judge(evaluator, scenes, img2img(base, scenes, args.seeds, strength))
    return report(results, args.json)


if __name__ == "__main__":
    main()
