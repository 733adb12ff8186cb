# The pictures behind position_confusion.py: rows are the positions, columns shapes x seeds 60-62 (the same noise
# in each column).
import numpy as np, torch
from PIL import Image
from sdxl_edu import load_pipeline
from sdxl_edu.nano.bench import phrase, generate
from sdxl_edu.nano.data import SHAPES, PHRASES

torch.set_num_threads(2)
pipe = load_pipeline()
rows = []
for p in PHRASES:
    ims = []
    for seed in (60, 61, 62):
        ims += generate(pipe, [phrase(s, position=p) for s in SHAPES], seed)
    rows.append(np.concatenate([np.asarray(i) for i in ims], 1))
Image.fromarray(np.concatenate(rows, 0)).save("training/nano2/probes/position_grid.png")
