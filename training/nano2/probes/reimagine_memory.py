# Does nano Reimagine bind two objects on the pictures it was trained on?
# Its variations of new two-object pictures keep both objects in about 30% whatever was changed (more
# steps, the data mix, context tokens, guidance, schedule: README, "nano Reimagine"). The stage trains on
# 16,000 square scenes, 48 passes over them by 12000 steps of 64. If its variations of those same
# scenes keep both objects far more often than of new ones, the UNet has learnt pictures by heart rather
# than how an embedding's objects are drawn, and fresh scenes (more data) are what it lacks.
# Training scenes: the first SCENES of the stage's square bucket with two objects, distinct in shape and in
# colour, uncropped (`framed`), generation seeds 10-13, scored as `reimagine_binding.py` scores validation
# scenes (seed 60,000), whose rate for the shipped file is printed beside.
# Usage, from the repository root: python training/nano2/probes/reimagine_memory.py RUN [SCENES] [FILE]
# RUN: a run folder with the stage's data (runs/nano2c); FILE: a nano Reimagine file (default: shipped)
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from PIL import Image

from sdxl_edu.loading import load_variation_pipeline
from sdxl_edu.nano import EVALUATOR_FILE, WEIGHTS
from sdxl_edu.nano.batches import load_data
from sdxl_edu.nano.bench import rate
from sdxl_edu.nano.classifiers import load_evaluator
from sdxl_edu.nano.data import COLOURS, SHAPES
from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.reimagine import SQUARE
from sdxl_edu.nano.reimagine_bench import by_objects, compare, input_scenes
from sdxl_edu.nano.scene_reading import read_objects

torch.set_num_threads(2)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 48
pipe = load_variation_pipeline(sys.argv[3] if len(sys.argv) > 3 else WEIGHTS / "nano_reimagine.safetensors",
                               tokenizers=WEIGHTS)
evaluator = load_evaluator(WEIGHTS / EVALUATOR_FILE.name)
data = load_data(Run(Path(sys.argv[1]), 0))[SQUARE]


def training_scenes() -> list:
    """The first n training scenes of two distinct, named objects in an uncropped picture."""
    scenes = []
    for image, labels, object_map, framed in zip(data["images"], data["labels"], data["object_maps"], data["framed"]):
        rows = labels[labels[:, 0] >= 0]
        if (framed and len(rows) == 2 and rows[0, 0] != rows[1, 0] and rows[0, 1] != rows[1, 1]
                and rows[:, 4].all()):
            objects = [SimpleNamespace(shape=SHAPES[s], colour=list(COLOURS)[c]) for s, c in rows[:, :2]]
            scenes.append(SimpleNamespace(image=image, objects=objects, object_map=object_map))
        if len(scenes) == n:
            break
    return scenes


for name, scenes in (("training scenes", training_scenes()),
                     ("validation scenes", by_objects(input_scenes(150, seed=60_000))["two objects, distinct"])):
    images, kept = [Image.fromarray(sc.image) for sc in scenes], []
    for seed in range(10, 14):
        variations = pipe(images, seed=seed, num_inference_steps=20, progress=False).images
        kept += [compare(sc, objects)[0] for sc, objects in zip(scenes, read_objects(evaluator, variations))]
    r = rate(kept)
    print(f"{name}, two distinct objects: both kept {100 * r['rate']:.1f}% [{100 * r['low']:.1f}, "
          f"{100 * r['high']:.1f}] of {r['n']}", flush=True)
