"""Measure nano SDXL 2: `python -m sdxl_edu.nano.bench [--seeds 2] [--json metrics.json]`.

Every number is measured on generated pictures with the evaluator (`SceneEvaluator`, never
used to train the generator) or with pixel rules (`sdxl_edu.nano.scene_reading`); every rate
comes with its count of pictures and a 95% Wilson interval (`rate`). The seeds scored here
start at 1000 (`SEED`) and are never used to choose anything: the thresholds below were
written before any model was measured (issue 17). The evaluator is measured first, on
rendered scenes (`reading_accuracy`): no other number is better than it.

| measure | target |
|---|---|
| one object, "a red circle": shape and colour as prompted (default guidance) | >= 95% |
| one object, "a circle on the left": position as prompted | >= 90% |
| two objects, "a red circle and a blue square": both, each its own shape and colour | >= 85% |
| the same "on the left and ... on the right": both, placed as prompted | >= 85% |
| three objects: all drawn as prompted | >= 60% |
| attention, two objects: shape word's DAAM map peaks in its own object / colour word's | >= 90% / >= 80% |
| negative prompt: "a circle" red, with negative "red" against without | a third or less |
| size conditioning: high-frequency energy at original size 128 against 32 | >= 2x |
| crop conditioning: whole at (0, 0) / cut at the far end of an original twice as wide or tall | >= 90% / most |
| refiner: degradation after it, below before; lower at aesthetic score 6 than at 2.5 | |
| circles round (bounding-box fill 0.70-0.84, aspect 0.85-1.18) / pictures with specks | >= 90% / <= 5% |
| one 128 x 128 picture, 20 steps with guidance, 2 CPU cores / a batch | < 1 s / less per picture |
"""

import argparse
import json
import time
from itertools import permutations
from pathlib import Path

import numpy as np

from .data import COLOURS, PHRASES, SHAPES
from .metrics import high_frequency_energy, saturation, touches_frame
from .scene_reading import read_objects, roundness, specks

SEED = 1000  # the first scored seed
ONE = [(s, c) for s in SHAPES for c in COLOURS]  # 15 prompts: "a red circle", ...
TWO = [((s1, c1), (s2, c2)) for i, s1 in enumerate(SHAPES) for s2 in SHAPES[i + 1:]
       for c1, c2 in permutations(COLOURS, 2)]  # 60: each pair of distinct shapes, distinct colours
THREE = [tuple(zip(SHAPES, colours)) for colours in permutations(COLOURS, 3)]  # 60


def rate(hits) -> dict:
    """A rate with its count and 95% Wilson interval (Wilson 1927), which stays inside [0, 1]
    and is honest at small counts.

    >>> rate([True] * 57 + [False] * 3)
    {'rate': 0.95, 'low': 0.863, 'high': 0.983, 'n': 60}
    >>> rate([False] * 30)["low"]
    0.0
    """
    n, k, z = len(hits), int(np.sum(hits)), 1.96
    if n == 0:
        return {"rate": float("nan"), "low": 0.0, "high": 1.0, "n": 0}
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = max(0.0, float(centre - half)), min(1.0, float(centre + half))
    return {"rate": round(p, 3), "low": round(low, 3), "high": round(high, 3), "n": n}


def phrase(shape: str, colour: str | None = None, position: str | None = None) -> str:
    """'a red circle on the left', as the captions say it.

    >>> phrase("circle", "red", "left"), phrase("square")
    ('a red circle on the left', 'a square')
    """
    return " ".join(["a", *([colour] if colour else []), shape, *([PHRASES[position]] if position else [])])


def generate(pipe, prompts, seed, **kwargs):
    """The benchmark's pictures: 20 steps of the pipeline's default sampler, as PIL images."""
    kwargs = {"num_inference_steps": 20, "progress": False, **kwargs}
    return pipe(list(prompts), seed=seed, **kwargs).images


def has(objects, shape: str, colour: str | None = None, position: str | None = None):
    """The first read object of that shape (and colour, and position), or None."""
    return next((o for o in objects if o.shape == shape and colour in (None, o.colour)
                 and position in (None, o.position)), None)


def reading_accuracy(evaluator, n: int = 300, seed: int = 20_000) -> dict:
    """The judge first: on rendered scenes it never saw, how often it reads every named object
    (shape, colour; and position) and reads nothing that is not there."""
    from .scenes import BUCKETS, make_scene

    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, BUCKETS[0]) for _ in range(n)]
    read = read_objects(evaluator, [s.image for s in scenes])
    every, placed, extra = [], [], []
    for s, objects in zip(scenes, read):
        named = [o for o in s.objects if o.named]
        every.append(all(has(objects, o.shape, o.colour) for o in named))
        placed.append(all(has(objects, o.shape, o.colour, o.position) for o in named))
        extra.append(len(objects) > len(s.objects))
    return {"every_object": rate(every), "every_object_placed": rate(placed), "reads_an_extra_object": rate(extra)}


def one_object(pipe, evaluator, seeds: int, guidance_scale: float) -> dict:
    """"a red circle" for the 15 shapes and colours, "a circle on the left" for the 15 shapes
    and positions; with the pictures' saturation, the circles' roundness and the specks."""
    hits, placed, round_, with_specks, pictures = [], [], [], [], []
    for seed in range(SEED, SEED + seeds):
        images = generate(pipe, [phrase(s, c) for s, c in ONE], seed, guidance_scale=guidance_scale)
        for (s, c), objects, image in zip(ONE, read_objects(evaluator, images), images):
            found = has(objects, s, c)
            hits.append(found is not None)
            if found is not None and s == "circle":
                fill, aspect = roundness(image, found.mask)
                round_.append(0.70 <= fill <= 0.84 and 0.85 <= aspect <= 1.18)
        with_specks += list(specks(images) > 0)
        pictures += images
        prompts = [(s, p) for s in SHAPES for p in PHRASES]
        images = generate(pipe, [phrase(s, position=p) for s, p in prompts], seed, guidance_scale=guidance_scale)
        placed += [has(objects, s, position=p) is not None for (s, p), objects in zip(prompts, read_objects(evaluator, images))]
    return {"shape_and_colour": rate(hits), "position": rate(placed), "circles_round": rate(round_),
            "pictures_with_specks": rate(with_specks), "saturation": round(saturation(pictures), 3)}


def several_objects(pipe, evaluator, seeds: int) -> dict:
    """Two objects (60 prompts a seed), the same placed left and right, and three objects (60)."""
    both, both_placed, three = [], [], []
    for seed in range(SEED + 100, SEED + 100 + seeds):
        images = generate(pipe, [" and ".join(phrase(s, c) for s, c in pair) for pair in TWO], seed)
        both += [all(has(objects, s, c) for s, c in pair) for pair, objects in zip(TWO, read_objects(evaluator, images))]
        prompts = [f"{phrase(s1, c1, 'left')} and {phrase(s2, c2, 'right')}" for (s1, c1), (s2, c2) in TWO]
        images = generate(pipe, prompts, seed)
        both_placed += [has(objects, s1, c1, "left") is not None and has(objects, s2, c2, "right") is not None
                        for ((s1, c1), (s2, c2)), objects in zip(TWO, read_objects(evaluator, images))]
        images = generate(pipe, [" and ".join(phrase(s, c) for s, c in trio) for trio in THREE], seed)
        three += [all(has(objects, s, c) for s, c in trio) for trio, objects in zip(THREE, read_objects(evaluator, images))]
    return {"two_both_drawn": rate(both), "two_placed_left_right": rate(both_placed), "three_all_drawn": rate(three)}


def pointing(heat, mask: np.ndarray) -> bool:
    """Does the heat map (h, w), upsampled bilinearly to the mask's size, peak inside it?"""
    import torch
    heat = torch.nn.functional.interpolate(heat[None, None].float(), size=mask.shape, mode="bilinear")[0, 0]
    return bool(mask.flat[int(heat.argmax())])


def attention(pipe, evaluator, seeds: int) -> dict:
    """In two-object pictures where both objects are drawn: does the shape word's DAAM map (all
    layers, heads and steps) peak inside its own object, and the colour word's? Chance is the
    share of the picture the object covers (a peak dropped at random)."""
    shape_hits, colour_hits, chance = [], [], []
    prompts = [" and ".join(phrase(s, c) for s, c in pair) for pair in TWO]
    for seed in range(SEED + 200, SEED + 200 + seeds):
        with pipe.capture_attention(per_layer=False) as attn:
            images = generate(pipe, prompts, seed)
        for i, (pair, objects) in enumerate(zip(TWO, read_objects(evaluator, images))):
            for s, c in pair:
                found = has(objects, s, c)
                if found is not None and all(has(objects, *o) for o in pair):
                    shape_hits.append(pointing(attn.cross_attention_map(s, i), found.mask))
                    colour_hits.append(pointing(attn.cross_attention_map(c, i), found.mask))
                    chance.append(found.mask.mean())
    return {"shape_word_peak_in_its_object": rate(shape_hits), "colour_word_peak_in_its_object": rate(colour_hits),
            "chance": round(float(np.mean(chance)), 3) if chance else float("nan")}


def negative_prompt(pipe, evaluator, n: int = 60) -> dict:
    """How often "a circle" comes out as a red circle, without and with negative prompt "red"."""
    def red(images):
        return [has(objects, "circle", "red") is not None for objects in read_objects(evaluator, images)]
    return {"red_without": rate(red(generate(pipe, ["a circle"] * n, SEED + 300))),
            "red_with_negative_red": rate(red(generate(pipe, ["a circle"] * n, SEED + 300, negative_prompt=["red"] * n)))}


def size_conditioning(pipe, seeds: int) -> dict:
    """High-frequency energy with original_size the bucket's (128) and a quarter of it (32)."""
    energy = {size: high_frequency_energy([im for seed in range(SEED + 400, SEED + 400 + seeds) for im in generate(
        pipe, [phrase(s, c) for s, c in ONE], seed, original_size=(size, size))]) for size in (128, 32)}
    return {"hf_energy_128": energy[128], "hf_energy_32": energy[32], "ratio": energy[128] / energy[32],
            "images": 2 * seeds * len(ONE)}


def crop_conditioning(pipe, evaluator, seeds: int, offset: int = 128) -> dict:
    """"a large red circle": whole (not touching the frame) at crop (0, 0); at an offset as for
    an original twice the bucket's width (height) cropped at its far end, cut by the left (top)."""
    prompts = [phrase(s, c).replace("a ", "a large ", 1) for s, c in ONE]
    whole, cut = [], []
    for seed in range(SEED + 500, SEED + 500 + seeds):
        for images, kind in ((generate(pipe, prompts, seed), "whole"),
                             (generate(pipe, prompts, seed, original_size=(128, 128 + offset),
                                       crops_coords_top_left=(0, offset)), "left"),
                             (generate(pipe, prompts, seed, original_size=(128 + offset, 128),
                                       crops_coords_top_left=(offset, 0)), "top")):
            for (s, c), objects in zip(ONE, read_objects(evaluator, images)):
                found = has(objects, s, c)
                if kind == "whole":
                    whole.append(found is not None and not touches_frame(found.mask[None])[0])
                else:
                    cut.append(found is not None and bool(touches_frame(found.mask[None], kind)[0]))
    return {"whole_at_0_0": rate(whole), f"cut_at_{offset}": rate(cut)}


def refiner_effect(pipe, refiner, evaluator, seeds: int) -> dict:
    """The evaluator's degradation estimate (0 clean .. 1) on base pictures, and after the
    refiner as img2img (strength 0.2: the last 4 of 20 steps, t < 200) at aesthetic score 6
    and 2.5; for base pictures at the bucket's original size and at a blurry 32."""
    import torch

    from .metrics import to_tensor

    def degradation(images) -> float:
        with torch.no_grad():
            return round(float(evaluator(to_tensor(images))["degradation"].mean()), 3)

    prompts, results = [phrase(s, c) for s, c in ONE], {}
    for size in (128, 32):
        base = {seed: generate(pipe, prompts, seed, original_size=(size, size)) for seed in range(SEED + 600, SEED + 600 + seeds)}
        results[f"degradation_base_{size}"] = degradation([im for ims in base.values() for im in ims])
        for score in (6.0, 2.5):
            refined = [im for seed, ims in base.items()
                       for im in generate(refiner, prompts, seed, image=ims, strength=0.2, aesthetic_score=score)]
            results[f"degradation_refined_{size}_at_{score:g}"] = degradation(refined)
    return results


def renders_control(n: int = 300, seed: int = 30_000) -> dict:
    """The pixel rules on rendered scenes, the control beside the generated pictures' numbers."""
    from .scenes import BUCKETS, make_scene

    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, BUCKETS[0]) for _ in range(n)]
    round_ = [0.70 <= f <= 0.84 and 0.85 <= a <= 1.18 for s in scenes for k, o in enumerate(s.objects, 1)
              if o.shape == "circle" and o.visible == 1.0 for f, a in [roundness(s.image, s.object_map == k)]]
    return {"circles_round": rate(round_), "pictures_with_specks": rate(list(specks([s.image for s in scenes]) > 0))}


def autoencoder_quality(vae, n: int = 120, seed: int = 40_000) -> dict:
    """The autoencoder on rendered scenes it never saw: PSNR of its reconstructions (dB, peak
    2 for pictures in [-1, 1]), and pictures with specks before and after it.

    >>> from sdxl_edu.model.vae import AutoencoderKL
    >>> from sdxl_edu.nano import NANO_VAE
    >>> sorted(autoencoder_quality(AutoencoderKL(NANO_VAE), n=2))
    ['psnr_db', 'reconstructions_with_specks', 'renders_with_specks']
    """
    import torch

    from .scenes import BUCKETS, make_scene

    rng = np.random.default_rng(seed)
    renders = np.stack([make_scene(rng, BUCKETS[0]).image for _ in range(n)])
    x = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(x[i:i + 30]).mean).clamp(-1, 1) for i in range(0, n, 30)])
    psnr = 10 * torch.log10(4 / ((rec - x) ** 2).mean((1, 2, 3)))
    pictures = ((rec + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return {"psnr_db": round(float(psnr.mean()), 2), "renders_with_specks": rate(list(specks(renders) > 0)),
            "reconstructions_with_specks": rate(list(specks(pictures) > 0))}


def timing(pipe) -> dict:
    """Seconds for one picture (20 steps with guidance, after a warm-up) and per picture in a batch of 16."""
    generate(pipe, ["a red circle"], 0)
    start = time.perf_counter()
    generate(pipe, ["a red circle"], 0)
    one = time.perf_counter() - start
    start = time.perf_counter()
    generate(pipe, ["a red circle"] * 16, 0)
    return {"one_image_s": round(one, 3), "per_image_in_batch_of_16_s": round((time.perf_counter() - start) / 16, 3)}


def main(argv=None) -> dict:
    """The command line: every measurement above, printed one line per group, and returned
    (and written to `--json`) as a dict of dicts."""
    from ..loading import load_pipeline
    from . import BASE_FILE, EVALUATOR_FILE, REFINER_FILE, WEIGHTS
    from .classifiers import load_evaluator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--weights", default=str(WEIGHTS), help="a folder of nano SDXL 2 files")
    parser.add_argument("--json", help="write the measurements here too")
    args = parser.parse_args(argv)
    folder = Path(args.weights)
    pipe, refiner = load_pipeline(folder / BASE_FILE.name), load_pipeline(folder / REFINER_FILE.name)
    evaluator = load_evaluator(folder / EVALUATOR_FILE.name)
    results = {"reading_accuracy": reading_accuracy(evaluator), "renders_control": renders_control(),
               "autoencoder": autoencoder_quality(pipe.vae.float()), "time": timing(pipe)}
    for scale in (1.0, 5.0, 12.0):
        results[f"one_object_guidance_{scale:g}"] = one_object(pipe, evaluator, args.seeds, scale)
    results["several_objects"] = several_objects(pipe, evaluator, args.seeds)
    results["attention"] = attention(pipe, evaluator, args.seeds)
    results["negative_prompt"] = negative_prompt(pipe, evaluator)
    results["size_conditioning"] = size_conditioning(pipe, args.seeds)
    results["crop_conditioning"] = crop_conditioning(pipe, evaluator, args.seeds)
    results["refiner"] = refiner_effect(pipe, refiner, evaluator, args.seeds)
    return report(results, args.json)


def report(results: dict, path: str | None = None) -> dict:
    """Print each group of measurements on one line, write them all to `path` (JSON) if given,
    and return them.

    >>> _ = report({"time": {"one_image_s": 0.4}})
    time: {"one_image_s": 0.4}
    """
    for name, values in results.items():
        print(f"{name}: {json.dumps(values)}")
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
