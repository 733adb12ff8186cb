# Does the base carry original_size into its latents? The latents' squared Laplacian and the pictures'
# high-frequency energy at original_size 128 against 32 (15 one-object prompts, validation seeds 50-51).
import numpy as np, torch
from sdxl_edu import load_pipeline
from sdxl_edu.nano.bench import ONE, phrase
from sdxl_edu.nano.metrics import high_frequency_energy

torch.set_num_threads(2)
pipe = load_pipeline()


def lap(z):
    l = 4 * z[..., 1:-1, 1:-1] - z[..., :-2, 1:-1] - z[..., 2:, 1:-1] - z[..., 1:-1, :-2] - z[..., 1:-1, 2:]
    return (l**2).mean(dim=(1, 2, 3))


prompts = [phrase(s, c) for s, c in ONE]
res = {}
for size in (128, 32):
    lat, ims = [], []
    for seed in (50, 51):
        out = pipe(prompts, seed=seed, num_inference_steps=20, progress=False, original_size=(size, size))
        lat.append(out.latents)
        ims += out.images
    res[size] = (torch.cat(lat), ims)
l128, l32 = lap(res[128][0]), lap(res[32][0])
print(
    "latent laplacian 128 vs 32:",
    l128.mean().item(),
    l32.mean().item(),
    "pairs higher at 128:",
    (l128 > l32).sum().item(),
    "of",
    len(l128),
)
print("pixel hf 128 vs 32:", high_frequency_energy(res[128][1]), high_frequency_energy(res[32][1]))
