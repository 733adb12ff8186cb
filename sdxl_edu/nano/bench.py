"""Measure nano SDXL: `python -m sdxl_edu.nano.bench [--seeds 4] [--json metrics.json]`.

Every number is measured on generated pictures with the evaluator (`classifiers.Evaluator`),
never used to train the generator, or with pixel statistics; both are `sdxl_edu.nano.metrics`,
which the lessons use too. The evaluator's own accuracy on freshly rendered pictures is
measured first: the other numbers are only as good as it.

- prompt fidelity: every shape x colour pair, several seeds, 20 Euler steps; the evaluator
  must read the prompted shape and colour; position prompts read the prompted position;
  at guidance 1, the default and a high scale, with the pictures' saturation alongside;
- negative prompt: how often "a circle" comes out red, with and without negative "red";
- size conditioning: high-frequency energy with a small `original_size` vs the bucket's;
- crop conditioning: how often the object is whole at crop (0, 0), and cut by the top or
  left edge at a large offset (a photograph twice the bucket's width or height, cropped at
  its far end: the data's subjects sit near the middle of the photograph);
- refiner: the evaluator's degradation estimate on base outputs, and after the refiner as
  img2img (strength 0.2: the last 4 of 20 steps, t < 200) at aesthetic score 6.0 and 2.5,
  for base pictures at the bucket's original size and at a blurry original size of 16;
- attention: does the shape word's cross-attention map peak on the object (pointing game);
  the colour word's map alongside, for comparison;
- time: one 64 x 64 picture, 20 steps with guidance, and a batch of 16.

Fidelity, size, crop, refiner and attention are each measured over `--seeds` seeds of the
15 shape x colour prompts (60 pictures per condition at the default 4).
"""

import argparse
import json
import time

import numpy as np

from . import BASE_FILE, REFINER_FILE
from .classifiers import load_evaluator
from .data import COLOURS, PHRASES, POSITIONS, SHAPES
from .metrics import evaluator_accuracy, high_frequency_energy, object_mask, peak_inside, present, read, saturation, \
    touches_frame

SHAPE_COLOUR_PROMPTS = [f"a {c} {s}" for s in SHAPES for c in COLOURS]  # "a red circle", ...


def generate(pipe, prompts, seed, **kwargs):
    """The benchmark's pictures: 20 steps of the pipeline's default sampler, as PIL images.

    >>> from sdxl_edu import load_pipeline
    >>> [im.size for im in generate(load_pipeline(), ["a red circle", "a blue square"], seed=0)]
    [(64, 64), (64, 64)]
    """
    kwargs = {"num_inference_steps": 20, "progress": False, **kwargs}
    return pipe(prompts, seed=seed, **kwargs).images


def fidelity(pipe, evaluator, seeds: int, guidance_scale: float) -> dict:
    """How often the evaluator reads the prompted shape and colour (15 prompts per seed), and
    the prompted position (15 shape x position prompts per seed), at one guidance scale.

    >>> from sdxl_edu import load_pipeline
    >>> result = fidelity(load_pipeline(), load_evaluator(), seeds=1, guidance_scale=5.0)
    >>> result["images"], result["shape_and_colour"] >= 0.8, result["position"] >= 0.8
    (30, True, True)
    """
    pairs = [(s, c) for s in SHAPES for c in COLOURS]  # in the order of SHAPE_COLOUR_PROMPTS
    prompts = SHAPE_COLOUR_PROMPTS
    hits, images_all = [], []
    for seed in range(seeds):
        images = generate(pipe, prompts, seed, guidance_scale=guidance_scale)
        seen = read(evaluator, images)
        hits += [seen["shape"][i] == SHAPES.index(s) and seen["colour"][i] == list(COLOURS).index(c)
                 for i, (s, c) in enumerate(pairs)]
        images_all += images
    position_prompts = [(s, p) for s in SHAPES for p in POSITIONS]
    position_hits = []
    for seed in range(seeds):
        images = generate(pipe, [f"a {s} {PHRASES[p]}" for s, p in position_prompts], seed,
                          guidance_scale=guidance_scale)
        seen = read(evaluator, images)
        position_hits += [seen["position"][i] == POSITIONS.index(p) for i, (_, p) in enumerate(position_prompts)]
    return {"shape_and_colour": float(np.mean(hits)), "position": float(np.mean(position_hits)),
            "saturation": saturation(images_all), "images": len(hits) + len(position_hits)}


def negative_prompt(pipe, evaluator, n: int) -> dict:
    """How often `n` pictures of "a circle" come out red, without and with negative prompt "red".

    >>> from sdxl_edu import load_pipeline
    >>> result = negative_prompt(load_pipeline(), load_evaluator(), n=24)
    >>> result["red_without"] > 0, result["red_with_negative_red"] <= result["red_without"] / 3
    (True, True)
    """
    red = list(COLOURS).index("red")
    prompts = ["a circle"] * n
    plain = read(evaluator, generate(pipe, prompts, 0))["colour"]
    negated = read(evaluator, generate(pipe, prompts, 0, negative_prompt=["red"] * n))["colour"]
    return {"red_without": float(np.mean(plain == red)), "red_with_negative_red": float(np.mean(negated == red))}


def size_conditioning(pipe, seeds: int) -> dict:
    """High-frequency energy with original_size the bucket's (64) and a quarter of it (16).

    >>> from sdxl_edu import load_pipeline
    >>> result = size_conditioning(load_pipeline(), seeds=1)
    >>> result["images"], result["ratio"] > 1  # a small original size: blurrier pictures
    (30, True)
    """
    energy = {}
    for size in (64, 16):
        images = [im for seed in range(seeds)
                  for im in generate(pipe, SHAPE_COLOUR_PROMPTS, 100 + seed, original_size=(size, size))]
        energy[size] = high_frequency_energy(images)
    return {"hf_energy_64": energy[64], "hf_energy_16": energy[16], "ratio": energy[64] / energy[16],
            "images": 2 * seeds * len(SHAPE_COLOUR_PROMPTS)}


def crop_conditioning(pipe, seeds: int, offset: int = 64) -> dict:
    """Whole objects at crop (0, 0); at a large offset, as for a photograph twice the bucket's
    width (height) cropped at its far end, objects cut by the left (top) edge.

    >>> from sdxl_edu import load_pipeline
    >>> result = crop_conditioning(load_pipeline(), seeds=1)
    >>> result["images"], result["cut_top_or_left_at_64"] > 0.5  # told "cut from the far end": cut
    (30, True)
    """
    prompts = [f"a large {c} {s}" for s in SHAPES for c in COLOURS]
    half = len(prompts) // 2
    whole, cut = [], []
    for seed in range(200, 200 + seeds):
        whole += generate(pipe, prompts, seed)
        cut += generate(pipe, prompts[:half], seed, original_size=(64, 64 + offset), crops_coords_top_left=(0, offset))
        cut += generate(pipe, prompts[half:], seed, original_size=(64 + offset, 64), crops_coords_top_left=(offset, 0))
    whole, cut = object_mask(whole), object_mask(cut)
    return {"whole_at_0_0": float(np.mean(present(whole) & ~touches_frame(whole))),
            f"cut_top_or_left_at_{offset}": float(np.mean(present(cut) & touches_frame(cut, "top left"))),
            "images": len(whole) + len(cut)}


def refiner_effect(pipe, refiner, evaluator, seeds: int) -> dict:
    """The evaluator's degradation estimate (0 clean .. 1) on base pictures and after the
    refiner at aesthetic score 6.0 and 2.5; for base pictures made at the bucket's original
    size (already clean to the evaluator) and at original size 16 (blurry: something to clean).

    >>> from sdxl_edu import load_pipeline
    >>> from sdxl_edu.nano import REFINER_FILE
    >>> r = refiner_effect(load_pipeline(), load_pipeline(REFINER_FILE), load_evaluator(), seeds=1)
    >>> r["degradation_refined_16_at_2.5"] > r["degradation_refined_16_at_6"]  # the score steers the refiner
    True
    """
    def degradation(images) -> float:  # the evaluator's estimate: 0 for a clean picture, up to 1
        return float(read(evaluator, images)["degradation"].mean())

    results = {}
    for size in (64, 16):
        base = {seed: generate(pipe, SHAPE_COLOUR_PROMPTS, seed, original_size=(size, size))
                for seed in range(300, 300 + seeds)}
        refined = {score: [im for seed, images in base.items() for im in generate(
            # strength 0.2 of 20 trailing steps re-runs t = 199 ... 49: the noise levels nano's refiner knows
            refiner, SHAPE_COLOUR_PROMPTS, seed, image=images, strength=0.2, aesthetic_score=score)]
            for score in (6.0, 2.5)}
        results[f"degradation_base_{size}"] = degradation([im for ims in base.values() for im in ims])
        for score, images in refined.items():
            results[f"degradation_refined_{size}_at_{score:g}"] = degradation(images)
    return results


def pointing_game(pipe, seeds: int) -> dict:
    """Does the shape word's map peak on the object? For DAAM's map (all layers, heads and
    steps) and for each cross-attention layer on its own (layers specialise, lesson 6); and,
    for comparison, DAAM's map of the colour word, which nano's object pixels read most.

    >>> from sdxl_edu import load_pipeline
    >>> result = pointing_game(load_pipeline(), seeds=1)
    >>> result["images"], result["best_layer_peak_on_object"] > 0.5  # the object is a sixth of the picture
    (15, True)
    """
    words = [p.split()[-1] for p in SHAPE_COLOUR_PROMPTS]
    colours = [p.split()[-2] for p in SHAPE_COLOUR_PROMPTS]
    daam, daam_colour, layers = [], [], {}
    for seed in range(400, 400 + seeds):
        with pipe.capture_attention() as attn:
            masks = object_mask(generate(pipe, SHAPE_COLOUR_PROMPTS, seed))
        daam += [peak_inside(attn.cross_attention_map(w, i), masks[i]) for i, w in enumerate(words)]
        daam_colour += [peak_inside(attn.cross_attention_map(c, i), masks[i]) for i, c in enumerate(colours)]
        for name in attn.layer_maps:
            layers.setdefault(name, []).extend(
                peak_inside(attn.head_maps(name, w, i).mean(0), masks[i]) for i, w in enumerate(words))
    layers = {name: float(np.mean(hits)) for name, hits in layers.items()}
    best = max(layers, key=layers.get)
    return {"shape_word_peak_on_object": float(np.mean(daam)), "best_layer": best,
            "best_layer_peak_on_object": layers[best], "colour_word_peak_on_object": float(np.mean(daam_colour)),
            "images": len(daam)}


def timing(pipe) -> dict:
    """Seconds for one picture (20 steps with guidance, after a warm-up) and per picture in a
    batch of 16. Printed by the benchmark; no test asserts a time.

    >>> from sdxl_edu import load_pipeline
    >>> sorted(timing(load_pipeline()))
    ['one_image_s', 'per_image_in_batch_of_16_s']
    """
    generate(pipe, ["a red circle"], 0)  # warm-up
    start = time.perf_counter()
    generate(pipe, ["a red circle"], 0)
    one = time.perf_counter() - start
    start = time.perf_counter()
    generate(pipe, ["a red circle"] * 16, 0)
    return {"one_image_s": one, "per_image_in_batch_of_16_s": (time.perf_counter() - start) / 16}


def main(argv=None) -> dict:
    """The command line: every measurement above, printed one line per group, and returned
    (and written to `--json`) as a dict of dicts.

    >>> import contextlib, io, json, tempfile
    >>> with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
    ...     results = main(["--seeds", "1", "--json", f"{folder}/m.json"])
    ...     written = json.load(open(f"{folder}/m.json"))
    >>> written == results, sorted(results)[:4]
    (True, ['attention', 'crop_conditioning', 'evaluator_accuracy', 'fidelity_guidance_1'])
    """
    from ..loading import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--json", help="write the measurements here too")
    args = parser.parse_args(argv)
    pipe, refiner = load_pipeline(BASE_FILE), load_pipeline(REFINER_FILE)
    evaluator = load_evaluator()
    results = {"evaluator_accuracy": evaluator_accuracy(evaluator), "time": timing(pipe)}
    for scale in (1.0, 5.0, 12.0):
        results[f"fidelity_guidance_{scale:g}"] = fidelity(pipe, evaluator, args.seeds, scale)
    results["negative_prompt"] = negative_prompt(pipe, evaluator, 24)
    results["size_conditioning"] = size_conditioning(pipe, args.seeds)
    results["crop_conditioning"] = crop_conditioning(pipe, args.seeds)
    results["refiner"] = refiner_effect(pipe, refiner, evaluator, args.seeds)
    results["attention"] = pointing_game(pipe, args.seeds)
    for name, values in results.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
