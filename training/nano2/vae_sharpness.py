# The autoencoder against size conditioning: high-frequency energy of scenes whose original was
# small (upscaled, so blurred) or large (sharp), before and after encode and decode by the
# trained autoencoder (`python training/nano2/vae_sharpness.py` after the README's `cp`, which
# puts the packed vae.pt in runs/nano2).
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.metrics import high_frequency_energy
from sdxl_edu.nano.scenes import small_and_large_originals
from sdxl_edu.nano.stages import trained_vae

N = 48
torch.set_num_threads(1)
vae = trained_vae(Run(Path("runs/nano2"), 0))
small, large = small_and_large_originals(N)


@torch.no_grad()
def reconstructed(images):
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = vae.decode(vae.encode(x).mean).clamp(-1, 1)
    return [Image.fromarray(((a.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)) for a in y]


for name, images in (("small originals (<= 40 px)", small), ("large originals (>= 128 px)", large)):
    data = high_frequency_energy([Image.fromarray(im) for im in images])
    print(f"{name}: data {data:.5f}, reconstructed {high_frequency_energy(reconstructed(images)):.5f}")
