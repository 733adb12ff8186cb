# The autoencoder against size conditioning: high-frequency energy of scenes whose original was
# small (upscaled, blurred) or large (sharp), before and after encode/decode by the trained
# autoencoder of runs/nano2 (python training/nano2/vae_sharpness.py, after the README's cp).
import numpy as np, torch
from PIL import Image
from pathlib import Path
torch.set_num_threads(1)
from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.stages import trained_vae
from sdxl_edu.nano.scenes import make_scene, BUCKETS
from sdxl_edu.nano.metrics import high_frequency_energy
vae = trained_vae(Run(Path("runs/nano2"), 0))
rng = np.random.default_rng(123)
small, large = [], []
while len(small) < 48 or len(large) < 48:
    s = make_scene(rng, BUCKETS[0])
    short = min(s.original_size)
    if short <= 40 and len(small) < 48: small.append(s.image)
    elif short >= 128 and len(large) < 48: large.append(s.image)
def recon(imgs):
    x = torch.from_numpy(np.stack(imgs)).permute(0,3,1,2).float()/127.5-1
    with torch.no_grad():
        z = vae.encode(x).mean if hasattr(vae.encode(x), "mean") else vae.encode(x)
        y = vae.decode(z).clamp(-1,1)
    return [Image.fromarray(((a.permute(1,2,0).numpy()+1)*127.5).round().astype(np.uint8)) for a in y]
for name, imgs in (("small originals (<=40 px)", small), ("large originals (>=128 px)", large)):
    pil = [Image.fromarray(i) for i in imgs]
    print(name, "data", round(high_frequency_energy(pil), 5), "reconstructed", round(high_frequency_energy(recon(imgs)), 5))
