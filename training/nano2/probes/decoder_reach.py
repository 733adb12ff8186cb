# Can the shipped decoder draw a sharp edge? For 24 scenes from large (sharp) originals and
# 24 from small (blurred) ones, optimise the latent itself (Adam, 300 steps, L1 to the picture),
# starting from the encoder's answer, and measure the decoded pictures' high-frequency energy.
# If the optimised latents decode sharp edges for sharp scenes and soft ones for blurred scenes,
# the decoder can tell them apart and the encoder is what loses the difference; if not, the
# decoder cannot draw it from any latent this search reaches. PSNR here is over all 24 pictures'
# pixels at once (the benchmark averages per picture). Fresh scenes (seed 123, as vae_sharpness.py),
# never the benchmark's.
# Usage, from the repository root: python training/nano2/probes/decoder_reach.py
from pathlib import Path

import numpy as np
import torch

from sdxl_edu.nano.batches import to_images
from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.metrics import high_frequency_energy
from sdxl_edu.nano.scenes import small_and_large_originals
from sdxl_edu.nano.stages import trained_vae
from sdxl_edu.pipeline import tensor_to_pil

torch.set_num_threads(1)
torch.manual_seed(0)
vae = trained_vae(Run(Path("training/nano2"), 0))
small, large = small_and_large_originals(24)


def pictures(x):  # [-1, 1] -> PIL
    return tensor_to_pil(((x + 1) / 2).clamp(0, 1))


for name, ims in (("small originals (<= 40 px)", small), ("large originals (>= 128 px)", large)):
    x = to_images(np.stack(ims))
    with torch.no_grad():
        z = vae.encode(x).mean
        encoded = vae.decode(z)
    z = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.02)
    for step in range(300):
        loss = (vae.decode(z) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fitted = vae.decode(z)
    psnr = lambda r: float(10 * torch.log10(4 / ((r.clamp(-1, 1) - x) ** 2).mean()))
    hf = [high_frequency_energy(pictures(a)) for a in (x, encoded, fitted)]
    print(f"{name}: data {hf[0]:.5f}; encoder's latent {hf[1]:.5f} ({psnr(encoded):.2f} dB); "
          f"optimised latent {hf[2]:.5f} ({psnr(fitted):.2f} dB)", flush=True)
