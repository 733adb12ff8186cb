# Why nano Reimagine's diversity is flat in noise_level: the benchmark's pixel distance between two variations
# of one picture, beside how often two variations differ in what they contain (the set of shapes and colours
# read), at noise levels 0, 250 and 500. Validation scenes (seed 60,000; the benchmark's start at 50,000) and
# generation seeds 10-13 (the benchmark's start at 1000).
from itertools import combinations

import numpy as np
import torch
from PIL import Image

from sdxl_edu.loading import load_variation_pipeline
from sdxl_edu.nano import EVALUATOR_FILE, WEIGHTS
from sdxl_edu.nano.classifiers import load_evaluator
from sdxl_edu.nano.reimagine_bench import diversity, input_scenes
from sdxl_edu.nano.scene_reading import read_objects

torch.set_num_threads(2)
pipe = load_variation_pipeline(WEIGHTS / "nano_reimagine.safetensors")
evaluator = load_evaluator(WEIGHTS / EVALUATOR_FILE.name)
scenes = input_scenes(30, seed=60_000)
images = [Image.fromarray(s.image) for s in scenes]
for level in (0, 250, 500):
    pictures = [[] for _ in scenes]
    for seed in range(10, 14):
        for i, image in enumerate(pipe(images, seed=seed, num_inference_steps=20, progress=False,
                                       noise_level=level).images):
            pictures[i].append(image)
    contents = [[sorted((o.shape, o.colour) for o in objects) for objects in read_objects(evaluator, p)]
                for p in pictures]
    differ = [a != b for c in contents for a, b in combinations(c, 2)]
    print(f"noise_level {level}: pixel diversity {diversity(pictures):.3f}, "
          f"pairs differing in content {np.mean(differ):.3f} of {len(differ)}", flush=True)
