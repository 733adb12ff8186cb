"""The stages of nano SDXL's training recipe, in the order they run.

1. `data`: render the dataset (`sdxl_edu.nano.data`), one array per aspect bucket;
2. `vae`: the KL autoencoder (L1 + edge + a tiny KL term, as LDM's first stage without the
   GAN), first on 32 x 32 crops, then on whole pictures (trained on crops only, its
   mid-block attention mixes colours across a whole 16 x 16 latent); then its scaling factor
   measured as SDXL's was: 1 / std of the training latents;
3. `latents`: encode every picture once, clean and degraded (the autoencoder is frozen from
   here on, so the UNets train on cached latents);
4. `clip`: both text encoders pretrained as CLIP was, contrastively against (latent) images
   (`sdxl_edu.nano.clip`), then frozen, as SDXL freezes the CLIP ViT-L and OpenCLIP bigG it borrows;
5. `base`: the base UNet, v-prediction on the zero-terminal-SNR schedule, t uniform over
   0..999; 10% of captions dropped by zeroing the context and pooled embedding, as SDXL's
   conditioner does, which is what makes classifier-free guidance possible;
6. `refiner`: the refiner UNet on t < 200 only, reading the (frozen) second encoder and an
   aesthetic score computed from the degradation applied to the picture;
7. `classifiers`: the noise-aware classifier (on noisy latents) and the evaluator (on clean
   pictures, their reconstructions and degraded copies);
8. `export`: single-file checkpoints in the released layout, tokenizers, classifiers.

Each trains with `sdxl_edu.nano.loop.fit` on batches drawn as `sdxl_edu.nano.batches` says.
The UNets learn v-prediction with the schedule the pipeline samples with: x_t from
`NoiseSchedule.q_sample`, the target from `NoiseSchedule.v_target`,
v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022).
`python -m sdxl_edu.nano.train` runs the stages (tests/test_nano_train.py runs every one on
a few pictures, and is their example).
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..model.conditioning import vector_y
from ..model.unet import UNet
from ..model.vae import AutoencoderKL
from ..sampling.schedule import NoiseSchedule
from . import NANO_BASE, NANO_REFINER, NANO_SCHEDULER, NANO_VAE, WEIGHTS
from .batches import (captions_for, frozen_text_embeddings, load_data, load_latents, micro_ids, nano_tokenizers,
                      noisy_latents, pick, to_images)
from .classifiers import Evaluator, NoisyClassifier
from .clip import clip_heads, clip_text_embeddings, contrastive_loss, new_text_encoders, same_caption, \
    zero_shot_accuracy
from .data import ATTRIBUTES, BUCKETS, aesthetic_score, degrade, make_sample
from .loop import Run, fit

STAGES = ("data", "vae", "latents", "clip", "base", "refiner", "classifiers", "export")
STEPS = {"vae": 2000, "vae_pictures": 1500, "clip": 1500, "base": 9000, "refiner": 2000, "classifier": 900, "evaluator": 1200}
SAMPLES_PER_BUCKET = 16000


def stage_data(run: Run, per_bucket: int = SAMPLES_PER_BUCKET) -> None:
    """Render `per_bucket` pictures per aspect bucket with their ground truth, each bucket
    from its own seed."""
    for i, bucket in enumerate(BUCKETS):
        rng = np.random.default_rng(run.seed * 100 + i)
        samples = [make_sample(rng, bucket) for _ in tqdm(range(per_bucket), desc=f"data {bucket}")]
        np.savez(run.out / f"data_{bucket[0]}x{bucket[1]}.npz",
                 images=np.stack([s.image for s in samples]),
                 masks=np.stack([s.mask for s in samples]),
                 labels=np.array([[s.labels[k] for k in ATTRIBUTES] for s in samples]),
                 original_size=np.array([s.original_size for s in samples]),
                 crop_top_left=np.array([s.crop_top_left for s in samples]),
                 cut=np.array([s.extra["cut"] for s in samples]))


def stage_vae(run: Run) -> AutoencoderKL:
    """Train the autoencoder and measure its scaling factor, 1 / std of the latents (SDXL's
    0.13025 was measured the same way on its data)."""
    data = load_data(run)
    vae = AutoencoderKL(NANO_VAE)

    def reconstruction_loss(x):
        q = vae.encode(x)
        rec = vae.decode(q.sample())
        edges = sum((torch.diff(rec, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (2, 3))
        kl = 0.5 * (q.mean**2 + q.std**2 - 1 - q.logvar).mean()
        return (rec - x).abs().mean() + edges + 1e-4 * kl

    def on_crops(rng):  # cheap: a convolutional model learns from 32 x 32 crops
        b, idx = pick(rng, data, 32)
        top, left = (int(rng.integers(0, n - 32 + 1)) for n in BUCKETS[b])
        return reconstruction_loss(to_images(data[b]["images"][idx, top:top + 32, left:left + 32]))

    def on_pictures(rng):  # but the mid-block attention must see the token count it is used at
        b, idx = pick(rng, data, 8)
        return reconstruction_loss(to_images(data[b]["images"][idx]))

    vae = fit(run, "vae", {"vae": vae}, on_crops, STEPS["vae"], lr=5e-4)["vae"]
    vae = vae.requires_grad_(True)  # continue from the averaged weights
    vae = fit(run, "vae_pictures", {"vae": vae}, on_pictures, STEPS["vae_pictures"], lr=2e-4, warmup=50)["vae"]
    with torch.no_grad():  # SDXL's recipe for the scale: unit variance of the latents
        z = torch.cat([vae.encode(to_images(d["images"][:1000])).mean.flatten() for d in data])
    vae.scaling_factor = 1 / z.std().item()
    torch.save({"state": vae.state_dict(), "scaling_factor": vae.scaling_factor}, run.out / "vae.pt")
    return vae


def trained_vae(run: Run) -> AutoencoderKL:
    """The frozen autoencoder that the `vae` stage saved, with its scaling factor."""
    state = torch.load(run.out / "vae.pt", weights_only=False)
    vae = AutoencoderKL(NANO_VAE)
    vae.load_state_dict(state["state"])
    vae.scaling_factor = state["scaling_factor"]
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def stage_latents(run: Run) -> None:
    """Encode every picture once, clean and degraded (half of them at a random level, for the
    refiner's aesthetic score), scaled by the autoencoder's factor."""
    vae, data = trained_vae(run), load_data(run)
    for (h, w), d in zip(BUCKETS, data):
        rng = np.random.default_rng(run.seed * 7 + h)
        levels = np.where(rng.random(len(d["images"])) < 0.5, 0.0, rng.uniform(0, 1, len(d["images"])))
        clean, degraded = [], []
        for start in tqdm(range(0, len(d["images"]), 256), desc=f"latents {h}x{w}"):
            images = d["images"][start:start + 256]
            noisy = np.stack([degrade(im, lv, rng) for im, lv in zip(images, levels[start:start + 256])])
            clean.append(vae.encode(to_images(images)).mean * vae.scaling_factor)
            degraded.append(vae.encode(to_images(noisy)).mean * vae.scaling_factor)
        np.savez(run.out / f"latents_{h}x{w}.npz", clean=torch.cat(clean).half().numpy(),
                 degraded=torch.cat(degraded).half().numpy(), levels=levels)


def stage_clip(run: Run):
    """Pretrain both text encoders as CLIP was trained: contrastively against images, here
    nano's latents (`sdxl_edu.nano.clip`). SDXL takes its text encoders from CLIP pretraining
    and freezes them; so does nano. Returns the encoders, frozen."""
    data, latents = load_data(run), load_latents(run)
    te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    heads = clip_heads()

    def loss_fn(rng):
        b, idx = pick(rng, data, 256)
        captions, _ = captions_for(rng, data[b]["labels"][idx], 0)
        text_1, text_2 = clip_text_embeddings(te1, te2, heads, captions)
        image_1, image_2 = heads.image(torch.from_numpy(latents[b]["clean"][idx]).float())
        same = same_caption(captions)
        return (contrastive_loss(text_1, image_1, same, heads.logit_scale)
                + contrastive_loss(text_2, image_2, same, heads.logit_scale))

    trained = fit(run, "clip", {"text_encoder": te1, "text_encoder_2": te2, "heads": heads}, loss_fn,
                  STEPS["clip"], lr=1e-3)
    te1, te2, heads = trained["text_encoder"], trained["text_encoder_2"], trained["heads"]
    run.log(stage="clip", zero_shot=zero_shot_accuracy(te1, te2, heads, latents, data))
    return te1.requires_grad_(False), te2.requires_grad_(False)


def new_unet(config, init=None) -> UNet:
    """A UNet from its config; with `init` (a shipped pipeline), its weights in float32."""
    unet = UNet(config)
    if init is not None:  # continue from a shipped pipeline
        unet.load_state_dict({k: v.float() for k, v in init.unet.state_dict().items()})
    return unet


def stage_base(run: Run, schedule: NoiseSchedule, text_encoders, init=None):
    """The base UNet on the cached latents, reading the frozen text encoders: v-prediction, t
    uniform over 0..999, 10% of captions dropped (zero context and pooled)."""
    data, latents = load_data(run), load_latents(run)
    te1, te2 = text_encoders
    unet = new_unet(NANO_BASE, init)
    encode = frozen_text_embeddings(te1, te2)

    def loss_fn(rng):
        b, idx = pick(rng, data, 64)
        x0 = torch.from_numpy(latents[b]["clean"][idx]).float()
        captions, dropped = captions_for(rng, data[b]["labels"][idx], 0.1)
        context, pooled = encode(captions)
        keep = torch.from_numpy(~dropped).float()  # SDXL's conditioner drops a caption by zeroing both
        context, pooled = context * keep[:, None, None], pooled * keep[:, None]
        y = vector_y(pooled, micro_ids(data[b], idx, target_size=BUCKETS[b]))
        x_t, t, eps = noisy_latents(rng, schedule, x0)
        return F.mse_loss(unet(x_t, t, context, y), schedule.v_target(x0, t, eps))

    unet = fit(run, "base", {"unet": unet}, loss_fn, STEPS["base"], lr=3e-4)["unet"]
    return {"text_encoder": te1, "text_encoder_2": te2, "unet": unet}


def stage_refiner(run: Run, schedule: NoiseSchedule, text_encoder_2, init=None) -> UNet:
    """The refiner UNet on degraded latents at t < 200 only, told the aesthetic score of the
    degradation, reading the frozen second encoder."""
    data, latents = load_data(run), load_latents(run)
    unet = new_unet(NANO_REFINER, init)
    encode = frozen_text_embeddings(None, text_encoder_2.requires_grad_(False))

    def loss_fn(rng):
        b, idx = pick(rng, data, 32)
        x0 = torch.from_numpy(latents[b]["degraded"][idx]).float()
        captions, dropped = captions_for(rng, data[b]["labels"][idx], 0.1)
        captions = ["" if d else c for c, d in zip(captions, dropped)]  # the refiner's unconditional is ""
        context, pooled = encode(captions)
        scores = [aesthetic_score(lv) for lv in latents[b]["levels"][idx]]
        y = vector_y(pooled, micro_ids(data[b], idx, aesthetic_scores=scores))
        x_t, t, eps = noisy_latents(rng, schedule, x0, t_max=200)  # the refiner sees low noise only
        return F.mse_loss(unet(x_t, t, context, y), schedule.v_target(x0, t, eps))

    return fit(run, "refiner", {"unet": unet}, loss_fn, STEPS["refiner"], lr=3e-4)["unet"]


def attribute_loss(logits: dict, labels: torch.Tensor) -> torch.Tensor:
    """The sum of one cross-entropy per attribute (shape, colour, position, size).

    >>> logits = {k: torch.zeros(2, n) for k, n in zip(ATTRIBUTES, (3, 5, 5, 2))}
    >>> round(attribute_loss(logits, torch.zeros(2, 4, dtype=torch.long)).item(), 3)  # ln 3 + 2 ln 5 + ln 2
    5.011
    """
    return sum(F.cross_entropy(logits[k], labels[:, i]) for i, k in enumerate(ATTRIBUTES))


def stage_classifiers(run: Run, schedule: NoiseSchedule, vae: AutoencoderKL):
    """The noise-aware classifier on q_sample(latents, t), then the evaluator on clean pictures,
    their reconstructions and degraded copies."""
    data, latents = load_data(run), load_latents(run)
    classifier, evaluator = NoisyClassifier(), Evaluator()

    def classifier_loss(rng):
        b, idx = pick(rng, data, 128)
        x_t, t, _ = noisy_latents(rng, schedule, torch.from_numpy(latents[b]["clean"][idx]).float())
        return attribute_loss(classifier(x_t, t), torch.from_numpy(data[b]["labels"][idx]))

    classifier = fit(run, "classifier", {"m": classifier}, classifier_loss, STEPS["classifier"], lr=1e-3)["m"]

    def evaluator_loss(rng):
        b, idx = pick(rng, data, 64)
        images = data[b]["images"][idx]
        kind = rng.integers(3, size=len(idx))  # clean, reconstructed, degraded
        levels = np.where(kind == 2, rng.uniform(0.1, 1, len(idx)), 0.0)
        x = to_images(np.stack([degrade(im, lv, rng) for im, lv in zip(images, levels)]))
        recon = kind == 1
        with torch.no_grad():  # decode only the third that is shown as a reconstruction
            z = torch.from_numpy(latents[b]["clean"][idx[recon]]).float() / vae.scaling_factor
            x[torch.from_numpy(recon)] = vae.decode(z).clamp(-1, 1)
        out = evaluator(x)
        return (attribute_loss(out, torch.from_numpy(data[b]["labels"][idx]))
                + 5 * F.mse_loss(out["degradation"], torch.from_numpy(levels).float()))

    evaluator = fit(run, "evaluator", {"m": evaluator}, evaluator_loss, STEPS["evaluator"], lr=1e-3)["m"]
    return classifier, evaluator


def stage_export(run: Run, vae, base: dict, refiner: UNet, classifier, evaluator, weights: Path = WEIGHTS) -> None:
    """Write the EMA weights in fp16 as single files in the released layout, the tokenizers,
    and the two classifiers."""
    import safetensors.torch

    from ..loading import save_single_file

    weights.mkdir(parents=True, exist_ok=True)
    vae.config = dataclasses.replace(vae.config, scaling_factor=vae.scaling_factor)
    half = {"default_size": 64, "scheduler": NANO_SCHEDULER}
    for module in (vae, base["unet"], refiner, base["text_encoder"], base["text_encoder_2"]):
        module.half()
    save_single_file(weights / "nano_sdxl_base.safetensors", base["unet"], vae, base["text_encoder_2"],
                     base["text_encoder"], extra=half)
    save_single_file(weights / "nano_sdxl_refiner.safetensors", refiner, vae, base["text_encoder_2"], extra=half)
    tok, tok_2 = nano_tokenizers()
    tok.save_pretrained(weights / "tokenizer")
    tok_2.save_pretrained(weights / "tokenizer_2")
    for name, model in (("nano_classifier", classifier), ("nano_evaluator", evaluator)):
        safetensors.torch.save_file({k: v.half().contiguous() for k, v in model.state_dict().items()},
                                    str(weights / f"{name}.safetensors"))
