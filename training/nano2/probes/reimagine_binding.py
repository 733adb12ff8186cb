# Where nano Reimagine loses two-object pictures: does nano's CLIP image embedding, the only thing the
# variations UNet sees of a picture, say which colour belongs to which shape?
# Each trial draws two objects of distinct shapes and distinct colours in a picture A, then the same two
# elsewhere (B, the same binding) and, at B's places, with their colours swapped (C, the other binding;
# B and C share background and colour jitter). The embedding binds when A lies nearer B than C (cosine).
# Controls: one object, against the same shape in another colour (colour read) or another shape in the
# same colour (shape read). The text side: does A's embedding prefer "a red circle and a blue square" to
# "a blue circle and a red square" (the second text encoder's space, which the tower was trained into)?
# Chance is 50% everywhere. Seeds from 70,000 (the benchmark's scenes start at 50,000).
# Then what the variations of two-object pictures get wrong: validation scenes (seed 60,000, as
# `reimagine_diversity.py`) whose two objects differ in shape and in colour, generation seeds 10-13,
# each variation read by the evaluator and sorted into: both objects kept, colours swapped between the
# two shapes, one kept and nothing else drawn, one kept and the other changed, neither kept; and how many
# objects the evaluator reads in each variation, beside one-object scenes. The first 8 two-object inputs
# and their variations go to reimagine_two_objects.png beside this script.
# Usage, from the repository root: python training/nano2/probes/reimagine_binding.py [TRIALS] [SCENES] [FILE]
# FILE: another nano Reimagine file to score (default: the shipped one, whose grid is saved)
import sys

import numpy as np
import torch
import torch.nn.functional as F

from PIL import Image

from sdxl_edu.loading import load_variation_pipeline
from sdxl_edu.model.text import tokenize
from sdxl_edu.nano import EVALUATOR_FILE, WEIGHTS
from sdxl_edu.nano.classifiers import load_evaluator
from sdxl_edu.nano.bench import phrase, rate
from sdxl_edu.nano.clip import clip_pixels
from sdxl_edu.nano.data import COLOURS, SHAPES
from sdxl_edu.nano.reimagine_bench import by_objects, input_scenes
from sdxl_edu.nano.scene_reading import read_objects
from sdxl_edu.nano.scenes import apart, render

torch.set_num_threads(2)
trials = int(sys.argv[1]) if len(sys.argv) > 1 else 300
n_scenes = int(sys.argv[2]) if len(sys.argv) > 2 else 150
shipped = len(sys.argv) <= 3
pipe = load_variation_pipeline(WEIGHTS / "nano_reimagine.safetensors" if shipped else sys.argv[3], tokenizers=WEIGHTS)
rng = np.random.default_rng(70_000)


def layout(n: int) -> list[dict]:
    """n places (centre and size) in a 128 x 128 picture, whole and apart."""
    while True:
        places = []
        for _ in range(n):
            size = 128 * rng.choice([0.25, 0.5]) * rng.uniform(0.9, 1.1)
            cy, cx = rng.uniform(size / 2 + 4, 128 - size / 2 - 4, 2)
            places.append(dict(size=size, cy=cy, cx=cx))
        if all(apart((a["cy"], a["cx"], a["size"] / 2), (b["cy"], b["cx"], b["size"] / 2))
               for i, a in enumerate(places) for b in places[i + 1:]):
            return places


def picture(things, places, seed) -> np.ndarray:
    objects = [dict(shape=s, colour=c, **p) for (s, c), p in zip(things, places)]
    return render(np.random.default_rng(seed), 128, 128, objects).clip(0, 255).astype(np.uint8)


@torch.no_grad()
def embed(images) -> torch.Tensor:
    """Unit CLIP image embeddings, as the variations pipeline computes them."""
    return F.normalize(pipe.image_encoder(pixel_values=clip_pixels(np.stack(images))).image_embeds, dim=-1)


@torch.no_grad()
def embed_text(captions) -> torch.Tensor:
    """Unit caption embeddings of the second text encoder (its projected end-of-text token)."""
    return F.normalize(pipe.text_encoder_2(tokenize(pipe.tokenizer_2, captions)).text_embeds, dim=-1)


def nearer(a, b, c) -> bool:
    """Whether unit vector a is nearer b than c."""
    return bool(a @ b > a @ c)


rows = {name: [] for name in ("two objects: binding", "one object: colour", "one object: shape")}
text = []
for trial in range(trials):
    (s1, s2), (c1, c2) = rng.choice(SHAPES, 2, replace=False), rng.choice(list(COLOURS), 2, replace=False)
    here, there, seed = layout(2), layout(2), 2 * trial
    a, b, c = embed([picture([(s1, c1), (s2, c2)], here, seed), picture([(s1, c1), (s2, c2)], there, seed + 1),
                     picture([(s1, c2), (s2, c1)], there, seed + 1)])
    rows["two objects: binding"].append(nearer(a, b, c))
    right, swapped = embed_text([f"{phrase(s1, c1)} and {phrase(s2, c2)}", f"{phrase(s1, c2)} and {phrase(s2, c1)}"])
    text.append(nearer(a, right, swapped))
    a, b, c, d = embed([picture([(s1, c1)], here[:1], seed), picture([(s1, c1)], there[:1], seed + 1),
                        picture([(s1, c2)], there[:1], seed + 1), picture([(s2, c1)], there[:1], seed + 1)])
    rows["one object: colour"].append(nearer(a, b, c))
    rows["one object: shape"].append(nearer(a, b, d))
rows["two objects: the right caption over the swapped one"] = text
for name, hits in rows.items():
    r = rate(hits)
    print(f"{name}: {100 * r['rate']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}] of {r['n']} (chance 50%)")


def outcome(want, read) -> str:
    """How a variation of a two-object picture with `want` [(shape, colour), ...] went, read as `read`."""
    (s1, c1), (s2, c2) = want
    kept = sum(w in read for w in want)
    if kept == 2:
        return "both kept"
    if (s1, c2) in read and (s2, c1) in read:
        return "colours swapped between the shapes"
    if kept == 1:
        return "one kept, nothing else drawn" if len(read) == 1 else "one kept, the other changed"
    return "neither kept"


evaluator = load_evaluator(WEIGHTS / EVALUATOR_FILE.name)
groups = by_objects(input_scenes(n_scenes, seed=60_000))
for group, scenes in groups.items():
    images = [Image.fromarray(sc.image) for sc in scenes]
    outcomes, counts, shown = [], [], [images[:8]]
    for seed in range(10, 14):
        variations = pipe(images, seed=seed, num_inference_steps=20, progress=False).images
        shown.append(variations[:8])
        for sc, objects in zip(scenes, read_objects(evaluator, variations)):
            counts.append(len(objects))
            if group == "two objects, distinct":
                want = [(o.shape, o.colour) for o in sc.objects]
                outcomes.append(outcome(want, {(o.shape, o.colour) for o in objects}))
    right = rate([c == len(scenes[0].objects) for c in counts])
    control = rate([len(objects) == len(scenes[0].objects) for objects in read_objects(evaluator, images)])
    print(f"{group}, {len(scenes)} scenes x 4 seeds: objects read per variation, median {np.median(counts):g}, "
          f"as many as the input in {100 * right['rate']:.1f}% [{100 * right['low']:.1f}, {100 * right['high']:.1f}] "
          f"(in the inputs themselves: {100 * control['rate']:.1f}%)")
    for name in ("both kept", "colours swapped between the shapes", "one kept, nothing else drawn",
                 "one kept, the other changed", "neither kept") if outcomes else ():
        r = rate([o == name for o in outcomes])
        print(f"  {name}: {100 * r['rate']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}] of {r['n']}")
    if shipped and group == "two objects, distinct":  # the first 8 inputs (top row) and their variations at seeds 10-13
        grid = Image.new("RGB", (128 * 8, 128 * len(shown)), "white")
        for r, row in enumerate(shown):
            for i, image in enumerate(row):
                grid.paste(image, (128 * i, 128 * r))
        grid.save("training/nano2/probes/reimagine_two_objects.png")
