# Position words, read back: which position the evaluator reads for each prompted one ("a circle on the left",
# 15 shapes x positions, validation seeds 60-65; the benchmark scores from 1000). Run from the repository root.
import collections, numpy as np, torch
from sdxl_edu import load_pipeline
from sdxl_edu.nano import WEIGHTS, EVALUATOR_FILE
from sdxl_edu.nano.classifiers import load_evaluator
from sdxl_edu.nano.bench import phrase, generate
from sdxl_edu.nano.data import SHAPES, PHRASES
from sdxl_edu.nano.scene_reading import read_objects

torch.set_num_threads(2)
pipe = load_pipeline()
ev = load_evaluator(WEIGHTS / EVALUATOR_FILE.name)
conf = collections.Counter()
n_obj = collections.Counter()
prompts = [(s, p) for s in SHAPES for p in PHRASES]
for seed in range(60, 66):
    for g in (5.0,):
        ims = generate(pipe, [phrase(s, position=p) for s, p in prompts], seed, guidance_scale=g)
        for (s, p), objs in zip(prompts, read_objects(ev, ims)):
            n_obj[len(objs)] += 1
            o = next((o for o in objs if o.shape == s), None)
            conf[(p, o.position if o else "none")] += 1
P = list(PHRASES) + ["none"]
print("prompted \\ read", P)
for p in PHRASES:
    print(p, [conf[(p, q)] for q in P])
print("objects read per picture", sorted(n_obj.items()))
