# Can a decoder fine-tune (encoder, latents and UNets unchanged) let size conditioning show?
# Train the decoder on scenes paired with copies blurred through 32 px; measure the round trip's
# sharpness on small and large originals, its PSNR, and the base's pictures at original 128 vs 32
# on validation seeds 50-51 (the benchmark scores 1400-1401).
import sys, time, numpy as np, torch
from PIL import Image
from sdxl_edu import load_pipeline
from sdxl_edu.nano.bench import ONE, phrase
from sdxl_edu.nano.metrics import high_frequency_energy
from sdxl_edu.nano.scenes import BUCKETS, make_scene, small_and_large_originals
from sdxl_edu.nano.batches import to_images

torch.set_num_threads(2)
steps = int(sys.argv[1])
pipe = load_pipeline()
vae = pipe.vae.float()


def blurred(im):  # as a 32 px original upscaled to 128
    return np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR).resize((128, 128), Image.BILINEAR))


def hf(x):
    return high_frequency_energy(
        [Image.fromarray(((a.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)) for a in x]
    )


@torch.no_grad()
def measure(tag):
    small, large = small_and_large_originals(48)
    out = {}
    for name, ims in (("small", small), ("large", large)):
        x = to_images(np.stack(ims))
        rec = vae.decode(vae.encode(x).mean).clamp(-1, 1)
        out[name] = (hf(x), hf(rec), float(10 * torch.log10(4 / ((rec - x) ** 2).mean())))
    ims = {}
    for size in (128, 32):
        ims[size] = [
            im
            for seed in (50, 51)
            for im in pipe(
                [phrase(s, c) for s, c in ONE],
                seed=seed,
                num_inference_steps=20,
                progress=False,
                original_size=(size, size),
            ).images
        ]
    g = high_frequency_energy(ims[128]) / high_frequency_energy(ims[32])
    print(
        f"{tag}: small data/rec hf {out['small'][0]:.5f}/{out['small'][1]:.5f} psnr {out['small'][2]:.2f}; "
        f"large {out['large'][0]:.5f}/{out['large'][1]:.5f} psnr {out['large'][2]:.2f}; "
        f"generated 128/32 hf ratio {g:.3f}",
        flush=True,
    )
    return ims


measure("shipped")
opt = torch.optim.AdamW(vae.decoder.parameters(), lr=1e-4, weight_decay=0.01)
vae.encoder.requires_grad_(False)
vae.decoder.requires_grad_(True)
rng = np.random.default_rng(7)
start = time.time()
for step in range(steps):
    scenes = [make_scene(rng, BUCKETS[0]).image for _ in range(4)]
    x = to_images(np.stack(scenes + [blurred(s) for s in scenes]))
    with torch.no_grad():
        q = vae.encode(x)
        z = q.mean + q.std * torch.randn_like(q.mean)
    rec = vae.decode(z)
    edges = sum((torch.diff(rec, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (2, 3))
    loss = (rec - x).abs().mean() + edges
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0:
        print(step, round(loss.item(), 4), round(time.time() - start), flush=True)
ims = measure(f"decoder fine-tuned {steps}")
row = lambda L: np.concatenate([np.asarray(i) for i in L[:8]], 1)
Image.fromarray(np.concatenate([row(ims[128]), row(ims[32])], 0)).save("/tmp/probes_dec.png")
torch.save(vae.decoder.state_dict(), "/tmp/probes_decoder.pt")
