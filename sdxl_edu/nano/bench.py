"""Measure nano SDXL: `python -m sdxl_edu.nano.bench [--seeds 4] [--json metrics.json]`.

Every number is measured on generated pictures with the evaluator (`classifiers.Evaluator`),
never used to train the generator, or with pixel statistics. The evaluator's own accuracy
on freshly rendered pictures is measured first: the other numbers are only as good as it.

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
import safetensors.torch
import torch

from . import BASE_FILE, CLASSIFIER_FILE, EVALUATOR_FILE, REFINER_FILE
from .classifiers import Evaluator, NoisyClassifier
from .data import ATTRIBUTES, COLOURS, PHRASES, POSITIONS, SHAPES

SHAPE_COLOUR_PROMPTS = [f"a {c} {s}" for s in SHAPES for c in COLOURS]  # "a red circle", ...


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


def to_tensor(images) -> torch.Tensor:
    """PIL pictures -> (B, 3, H, W) in [-1, 1].

    >>> from PIL import Image
    >>> x = to_tensor([Image.new("RGB", (80, 48), (255, 0, 0))])
    >>> tuple(x.shape), x[0, :, 0, 0].tolist()
    ((1, 3, 48, 80), [1.0, -1.0, -1.0])
    """
    return torch.from_numpy(np.stack([np.asarray(im, np.float32) for im in images])).permute(0, 3, 1, 2) / 127.5 - 1


@torch.no_grad()
def read(evaluator: Evaluator, images) -> dict[str, np.ndarray]:
    """What the evaluator sees: predicted index per attribute, and the degradation level.

    A freshly rendered training picture is read as its labels say:

    >>> from PIL import Image
    >>> from sdxl_edu.nano.data import make_sample
    >>> s = make_sample(np.random.default_rng(3), (64, 64))
    >>> seen = read(load_evaluator(), [Image.fromarray(s.image)])
    >>> all(seen[name][0] == s.labels[name] for name in ("shape", "colour"))
    True
    """
    out = evaluator(to_tensor(images))
    return {k: (v.argmax(-1) if v.ndim == 2 else v).numpy() for k, v in out.items()}


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
    """Per mask: is there an object at all (more than a few object pixels)?"""
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


def generate(pipe, prompts, seed, **kwargs):
    """The benchmark's pictures: 20 steps of the pipeline's default sampler, as PIL images.

    >>> from sdxl_edu import load_pipeline
    >>> [im.size for im in generate(load_pipeline(), ["a red circle", "a blue square"], seed=0)]
    [(64, 64), (64, 64)]
    """
    kwargs = {"num_inference_steps": 20, "progress": False, **kwargs}
    return pipe(prompts, seed=seed, **kwargs).images


def evaluator_accuracy(evaluator, n: int = 600, seed: int = 10_000) -> dict:
    """The judge first: its accuracy on freshly rendered pictures it never saw in training.

    >>> accuracy = evaluator_accuracy(load_evaluator(), n=100)
    >>> accuracy["shape"] > 0.9 and accuracy["colour"] > 0.9
    True
    """
    from PIL import Image

    from .data import BUCKETS, make_sample

    rng = np.random.default_rng(seed)
    samples = [make_sample(rng, BUCKETS[0]) for _ in range(n)]
    seen = read(evaluator, [Image.fromarray(s.image) for s in samples])
    return {name: float(np.mean(seen[name] == np.array([s.labels[name] for s in samples]))) for name in ATTRIBUTES}


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
