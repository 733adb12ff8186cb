# Can the autoencoder keep sharpness (the trace of a scene's original size) if it trains on?
# The shipped autoencoder draws every edge equally soft: its round trips of small (blurred)
# and large (sharp) originals have the same high-frequency energy, where the data differ 16x.
# MODE is one of six runs, each with the stage's loss (`stages.autoencoder_loss`) on fresh scenes
# (never the benchmark's), but not all of the stage's training: no gradient clipping, EMA or
# cosine decay, and the raw weights are scored.
# Fine-tuning encoder and decoder together from the shipped weights, on whole pictures:
#   plain        the stage's loss alone, the control: does more training do it?
#   adversarial  plus a patch discriminator with a hinge loss and VQGAN's adaptive weight, as
#                LDM's first stage (and so SDXL's autoencoder) was trained, less its LPIPS term
#                (a perceptual loss on pretrained VGG features, not tried here)
# From scratch on 64 x 64 crops, as the stage's first phase, to ask what the shape lacks:
#   narrow       the shipped shape (NANO_VAE: 16/32/64/64, one ResNet block a level), the reference
#   wide         twice as wide (32/64/128/128)
#   narrow_kl    the shipped shape with LDM's balance of KL against reconstruction: LDM weighs a
#                latent element's KL 1e-6 against a pixel's error, both summed; the stage's means
#                weigh it 1e-4 x 48 (pixels per latent element) = 4.8e-3, 4800 times more
#   narrow_mean  as narrow_kl, but the decoder reads the posterior's mean, not a sample of it: no noise
#                hides a small difference in the latent (the shipped encoder's posterior std is 0.056 on
#                average, about the size of the sharp/blurred difference within a pair)
# Every 400 steps: the round trip's sharpness on small and large originals, its PSNR and specks, and
# the posterior's mean std (the noise the decoder learns to ignore).
# Usage, from the repository root: python training/nano2/probes/autoencoder_sharpness.py MODE STEPS [THREADS]
import dataclasses, json, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sdxl_edu.model.vae import AutoencoderKL
from sdxl_edu.nano.batches import to_images
from sdxl_edu.nano import NANO_VAE
from sdxl_edu.nano.bench import autoencoder_quality
from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.metrics import high_frequency_energy
from sdxl_edu.nano.scenes import BUCKETS, make_scene, small_and_large_originals
from sdxl_edu.nano.stages import autoencoder_loss, trained_vae
from sdxl_edu.pipeline import tensor_to_pil

mode, steps = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
torch.manual_seed(0)
out = Path(f"runs/probes/autoencoder_{mode}")
out.mkdir(parents=True, exist_ok=True)
scratch = mode in ("narrow", "wide", "narrow_kl", "narrow_mean")
if scratch:
    vae = AutoencoderKL(dataclasses.replace(NANO_VAE, ch=32) if mode == "wide" else NANO_VAE).train()
else:
    vae = trained_vae(Run(Path("training/nano2"), 0)).requires_grad_(True).train()


def discriminator():  # VQGAN's N-layer patch discriminator, narrowed: one logit per ~34 px patch
    def block(i, o, stride):
        return [nn.Conv2d(i, o, 4, stride, 1), nn.GroupNorm(8, o), nn.LeakyReLU(0.2)]
    return nn.Sequential(nn.Conv2d(3, 32, 4, 2, 1), nn.LeakyReLU(0.2), *block(32, 64, 2), *block(64, 128, 1),
                         nn.Conv2d(128, 1, 4, 1, 1))


def pictures(x):  # [-1, 1] -> PIL
    return tensor_to_pil(((x + 1) / 2).clamp(0, 1))


@torch.no_grad()
def measure(step):
    vae.eval()
    small, large = small_and_large_originals(48)  # vae_sharpness.py's scenes
    row = {"step": step}
    for name, ims in (("small", small), ("large", large)):
        x = to_images(np.stack(ims))
        q = vae.encode(x)
        rec = vae.decode(q.mean).clamp(-1, 1)
        row[name] = {"data": round(high_frequency_energy(pictures(x)), 5),
                     "reconstructed": round(high_frequency_energy(pictures(rec)), 5),
                     "posterior_std": round(q.std.mean().item(), 4)}
    row["ratio_data"] = round(row["large"]["data"] / row["small"]["data"], 2)
    row["ratio_reconstructed"] = round(row["large"]["reconstructed"] / row["small"]["reconstructed"], 2)
    row |= autoencoder_quality(vae)
    vae.train()
    print(json.dumps(row), flush=True)
    with open(out / "measured.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def adaptive_weight(rec_loss, g_loss):  # VQGAN: balance the two gradients at the decoder's last layer
    last = vae.decoder.conv_out.weight
    g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach()


measure(0)
disc = discriminator() if mode == "adversarial" else None
# the stage's crop phase used 5e-4 (its whole-picture phase 2e-4)
opt = torch.optim.AdamW(vae.parameters(), lr=5e-4 if scratch else 1e-4, weight_decay=0.01)
opt_d = disc and torch.optim.AdamW(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 100))  # AdamW's moments start at 0
rng = np.random.default_rng(7)
start = time.time()
for step in range(1, steps + 1):
    x = to_images(np.stack([make_scene(rng, BUCKETS[0]).image for _ in range(8)]))
    if scratch:  # as the stage's first phase: 64 x 64 crops, two from each picture
        top, left = rng.integers(0, 128 - 64 + 1, (2, 16))
        x = torch.stack([x[i // 2, :, t:t + 64, l:l + 64] for i, (t, l) in enumerate(zip(top, left))])
    q = vae.encode(x)
    rec = vae.decode(q.mean if mode == "narrow_mean" else q.sample())
    loss = autoencoder_loss(x, rec, q, kl_weight=1e-6 / 48 if mode in ("narrow_kl", "narrow_mean") else 1e-4)
    if mode == "adversarial":
        g_loss = -disc(rec).mean()
        loss = loss + 0.5 * adaptive_weight(loss, g_loss) * g_loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    warmup.step()
    if mode == "adversarial":  # hinge loss: real patches above +1, reconstructed below -1
        d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
    if step % 50 == 0:
        print(step, round(loss.item(), 4), round(time.time() - start), flush=True)
    if step % 200 == 0 or step == steps:
        torch.save({"vae": vae.state_dict(), "step": step}, out / "vae.pt")
    if step % 400 == 0 or step == steps:
        measure(step)
