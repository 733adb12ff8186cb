# Does nano Reimagine's guidance scale, 10 by diffusers' default for Stable unCLIP, hold its variations
# back from the input's objects? Its variations of two distinct objects keep both in 18% and draw a median
# of 5 objects (`reimagine_binding.py`); a high guidance scale is known to oversaturate and to add detail
# (Ho & Salimans 2022, section 4.1), which on nano's plain scenes would mean extra objects. One sweep of
# the guidance scale against the zero embedding, on the validation scenes (seed 60,000, generation seeds
# 10-13, as the other Reimagine probes; the benchmark's scenes start at 50,000 and were not used):
# for inputs of one object and of two objects distinct in shape and colour, how often every input object
# is kept (the benchmark's "faithful"), the layout changed, and the evaluator reads as many objects as the
# input has. A scale chosen here would then be scored by the benchmark, on its own scenes.
# Usage, from the repository root: python training/nano2/probes/reimagine_guidance.py [SCENES] [THREADS] [SCALE ...]
import sys

import torch
from PIL import Image

from sdxl_edu.loading import load_variation_pipeline
from sdxl_edu.nano import EVALUATOR_FILE, WEIGHTS
from sdxl_edu.nano.bench import rate
from sdxl_edu.nano.classifiers import load_evaluator
from sdxl_edu.nano.reimagine_bench import by_objects, compare, input_scenes
from sdxl_edu.nano.scene_reading import read_objects

SCALES = (1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0)

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
pipe = load_variation_pipeline(WEIGHTS / "nano_reimagine.safetensors")
evaluator = load_evaluator(WEIGHTS / EVALUATOR_FILE.name)
groups = by_objects(input_scenes(int(sys.argv[1]) if len(sys.argv) > 1 else 150, seed=60_000))


def percent(flags: list[bool]) -> str:
    r = rate(flags)
    return f"{100 * r['rate']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


for scale in [float(a) for a in sys.argv[3:]] or SCALES:
    for group, scenes in groups.items():
        images = [Image.fromarray(sc.image) for sc in scenes]
        faithful, moved, count = [], [], []
        for seed in range(10, 14):
            variations = pipe(images, seed=seed, num_inference_steps=20, guidance_scale=scale, progress=False).images
            for sc, objects in zip(scenes, read_objects(evaluator, variations)):
                f, m = compare(sc, objects)
                faithful.append(f)
                moved.append(m)
                count.append(len(objects) == len(sc.objects))
        print(f"guidance {scale:g}, {group} ({len(faithful)}): every object kept {percent(faithful)}, layout changed "
              f"{percent(moved)}, as many objects as the input {percent(count)}", flush=True)
