# Does the shipped encoder's latent say whether a scene's edges are sharp (original >= 128 px)
# or blurred (original <= 40 px, upscaled)? A logistic regression on 800 scenes' latents, scored
# on 400 others (fresh scenes from seed 5, never the benchmark's). Two feature sets: per-channel
# statistics that do not depend on where the objects are (mean |z|, squared Laplacian, std, max,
# min) and the flattened latent; the control, the same statistics of the pictures (the data differ
# 16.6x in high-frequency energy). Usage, from the repository root:
#   python training/nano2/probes/sharpness_in_latents.py
import numpy as np, torch
from pathlib import Path
from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.stages import trained_vae
from sdxl_edu.nano.scenes import BUCKETS, make_scene
from sdxl_edu.nano.batches import to_images
torch.set_num_threads(1)
vae = trained_vae(Run(Path("training/nano2"), 0))
rng = np.random.default_rng(5)
X, Y = [], []
while len(Y) < 1200:
    s = make_scene(rng, BUCKETS[0]); short = min(s.original_size)
    if short <= 40 or short >= 128:
        X.append(s.image); Y.append(int(short >= 128))
Y = np.array(Y)
with torch.no_grad():
    Z = torch.cat([vae.encode(to_images(np.stack(X[i:i+100]))).mean for i in range(0, len(X), 100)])
def feats(z):  # translation-free statistics: per channel mean |z|, Laplacian energy, spatial std
    lap = 4*z[:, :, 1:-1, 1:-1]-z[:, :, :-2, 1:-1]-z[:, :, 2:, 1:-1]-z[:, :, 1:-1, :-2]-z[:, :, 1:-1, 2:]
    stats = (z.abs().mean((2, 3)), (lap**2).mean((2, 3)), z.std((2, 3)), z.amax((2, 3)), z.amin((2, 3)))
    return torch.cat(stats, 1).numpy()
pixels = torch.cat([to_images(np.stack(X[i:i+100])) for i in range(0, len(X), 100)])
# the control: the same statistics of the pictures themselves
for name, F in (("pixels, stats", feats(pixels)), ("latent, stats", feats(Z)), ("latent, flat", Z.flatten(1).numpy())):
    F = torch.tensor(F, dtype=torch.float32); F = (F - F[:800].mean(0)) / (F[:800].std(0) + 1e-6)
    y = torch.tensor(Y, dtype=torch.float32)
    w = torch.zeros(F.shape[1], requires_grad=True); b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500)
    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(F[:800] @ w + b, y[:800]) + 1e-3 * (w**2).sum()
        loss.backward(); return loss
    opt.step(closure)
    acc = (((F[800:] @ w + b) > 0).float() == y[800:]).float().mean().item()
    print(name, "held-out accuracy %.3f" % acc, "share sharp %.2f" % Y[800:].mean())
