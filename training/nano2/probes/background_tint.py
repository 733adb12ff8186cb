# Does the shipped autoencoder keep the backgrounds' tint? nano's backgrounds are light, barely
# tinted, sometimes two-toned. For 60 fresh scenes (seed 321, never the benchmark's), the chroma
# of the background's mean colour (largest minus smallest channel, in levels of 255) before and
# after a round trip, and the mean absolute error on background pixels.
# Usage, from the repository root: python training/nano2/probes/background_tint.py
from pathlib import Path

import numpy as np
import torch

from sdxl_edu.nano.batches import to_images
from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.scenes import BUCKETS, make_scene
from sdxl_edu.nano.stages import trained_vae

torch.set_num_threads(1)
vae = trained_vae(Run(Path("training/nano2"), 0))
rng = np.random.default_rng(321)
scenes = [make_scene(rng, BUCKETS[0]) for _ in range(60)]
with torch.no_grad():
    rec = vae.decode(vae.encode(to_images(np.stack([s.image for s in scenes]))).mean).clamp(-1, 1)
rec = (rec.permute(0, 2, 3, 1).numpy() + 1) * 127.5
data_chroma, rec_chroma, error = [], [], []
for s, r in zip(scenes, rec):
    background = s.object_map == 0
    d, q = s.image[background].astype(float), r[background]
    data_chroma.append(np.ptp(d.mean(0)))
    rec_chroma.append(np.ptp(q.mean(0)))
    error.append(np.abs(d - q).mean())
print(f"background chroma: data {np.mean(data_chroma):.1f}, reconstructed {np.mean(rec_chroma):.1f} levels; "
      f"mean |error| on the background {np.mean(error):.1f} levels")
halved = sum(b < a / 2 for a, b in zip(data_chroma, rec_chroma))
print(f"scenes whose background chroma falls by half or more: {halved} of {len(scenes)}")
