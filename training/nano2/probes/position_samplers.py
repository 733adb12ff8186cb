# Position words under other samplers and step counts (validation seeds 60-65, 90 pictures each).
import sys, collections, numpy as np, torch
from sdxl_edu import load_pipeline
from sdxl_edu.nano import WEIGHTS, EVALUATOR_FILE
from sdxl_edu.nano.classifiers import load_evaluator
from sdxl_edu.nano.bench import phrase, generate, has
from sdxl_edu.nano.data import SHAPES, PHRASES
from sdxl_edu.nano.scene_reading import read_objects

torch.set_num_threads(2)
pipe = load_pipeline()
ev = load_evaluator(WEIGHTS / EVALUATOR_FILE.name)
prompts = [(s, p) for s in SHAPES for p in PHRASES]
for name, kw in [
    ("euler20", {}),
    ("euler50", {"num_inference_steps": 50}),
    ("ancestral20", {"sampler": "euler_ancestral"}),
    ("dpmpp20", {"sampler": "dpmpp_2m"}),
    ("ddpm50", {"sampler": "ddpm", "num_inference_steps": 50}),
]:
    placed = []
    for seed in range(60, 66):
        ims = generate(pipe, [phrase(s, position=p) for s, p in prompts], seed, **kw)
        placed += [has(o, s, position=p) is not None for (s, p), o in zip(prompts, read_objects(ev, ims))]
    print(name, np.mean(placed).round(3), len(placed), flush=True)
