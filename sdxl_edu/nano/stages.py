"""The stages of nano SDXL's training recipe, in the order they run.

1. `data`: render the dataset of scenes (`sdxl_edu.nano.scenes`), one array per aspect bucket;
2. `vae`: the KL autoencoder, f = 8 as SDXL's (L1 + edge + a tiny KL term, as LDM's first
   stage without the GAN), first on 64 x 64 crops, then on whole pictures (trained on crops
   only, its mid-block attention would never see a whole 16 x 16 latent); then its scaling
   factor measured as SDXL's was: 1 / std of the training latents;
3. `latents`: encode every picture once, and a degraded copy of a third of them (the
   autoencoder is frozen from here on, so the UNets train on cached latents);
4. `clip`: both text encoders and an image tower pretrained as CLIP was, contrastively
   (`sdxl_edu.nano.clip`), then frozen, as SDXL freezes the CLIP ViT-L and OpenCLIP bigG it borrows;
5. `base`: the base UNet, t uniform over 0..999, on SDXL's betas rescaled to zero terminal
   SNR with v-prediction (`NANO_SCHEDULER`: its one departure from SDXL, and why);
   10% of captions dropped by zeroing the context and pooled embedding, as SDXL's
   conditioner does, which is what makes classifier-free guidance possible;
6. `refiner`: the refiner UNet on t < 200 only, reading the (frozen) second encoder and an
   aesthetic score computed from the degradation applied to the picture, on SDXL's own
   schedule (`SDXL_SCHEDULE`: below t = 200 the zero-SNR rescaling has nothing to fix);
   `reimagine`: nano Reimagine, the image-variations UNet (`sdxl_edu.nano.reimagine`);
7. `classifiers`: the noise-aware classifier (on noisy latents) and the evaluator (on clean
   pictures, their reconstructions and degraded copies);
8. `export`: single-file checkpoints in the released layout, tokenizers, the image tower,
   the classifiers.

Each trains with `sdxl_edu.nano.loop.fit` on batches drawn as `sdxl_edu.nano.batches` says.
The UNets learn what the schedule the pipeline samples with asks for: x_t from
`NoiseSchedule.q_sample`, the target from `NoiseSchedule.training_target` (the noise for
epsilon prediction, sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 for v).
`python -m sdxl_edu.nano.train` runs the stages (tests/test_nano_train.py runs every one on a
few pictures, and is their example).
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..model.conditioning import vector_y
from ..model.unclip import CLIP_MEAN, CLIP_STD
from ..model.unet import UNet
from ..model.vae import AutoencoderKL
from ..sampling.schedule import NoiseSchedule
from . import NANO_BASE, NANO_REFINER, NANO_SCHEDULER, NANO_VAE, SDXL_SCHEDULE, VISION_LIKE, WEIGHTS
from .batches import (captions_for, frozen_text_embeddings, load_data, load_latents, micro_ids, nano_tokenizers,
                      noisy_latents, pick, to_images)
from .clip import clip_heads, clip_image_embeddings, clip_pixels, clip_text_embeddings, contrastive_loss, \
    new_image_encoder, new_text_encoders, same_caption, zero_shot_accuracy
from .data import aesthetic_score, degrade
from .loop import Run, fit, stage_seed
from .classifiers import SceneClassifier, SceneEvaluator, pair_classes, presence
from .scenes import BUCKETS, make_scene

STAGES = ("data", "vae", "latents", "clip", "base", "refiner", "reimagine", "classifiers", "export")
STEPS = {"vae": 3000, "vae_pictures": 1000, "clip": 1500, "base": 9000, "refiner": 2000, "reimagine": 6000,
         "classifier": 900, "evaluator": 1200}
SAMPLES_PER_BUCKET = 16000


def stage_data(run: Run, per_bucket: int = SAMPLES_PER_BUCKET) -> None:
    """Render `per_bucket` scenes per aspect bucket with their ground truth (the picture, which
    object each pixel belongs to, each object's labels, the micro-conditioning), each bucket
    from its own seed."""
    for i, bucket in enumerate(BUCKETS):
        rng = np.random.default_rng(run.seed * 100 + i)
        scenes = [make_scene(rng, bucket) for _ in tqdm(range(per_bucket), desc=f"data {bucket}")]
        np.savez(run.out / f"data_{bucket[0]}x{bucket[1]}.npz",
                 images=np.stack([s.image for s in scenes]),
                 object_maps=np.stack([s.object_map for s in scenes]),
                 labels=np.stack([s.labels for s in scenes]),
                 original_size=np.array([s.original_size for s in scenes]),
                 crop_top_left=np.array([s.crop_top_left for s in scenes]),
                 framed=np.array([s.framed for s in scenes]))


def autoencoder_loss(x: torch.Tensor, rec: torch.Tensor, q, kl_weight: float = 1e-4) -> torch.Tensor:
    """The autoencoder's loss for pictures x, their reconstruction and the posterior q(z | x):
    |rec - x| + |d rec - d x| (the edges: finite differences along height and width) +
    kl_weight KL(q || N(0, 1)), every term a mean.

    >>> from sdxl_edu.model.vae import DiagonalGaussian
    >>> x = torch.zeros(1, 3, 4, 4)
    >>> autoencoder_loss(x, x + 0.5, DiagonalGaussian(torch.zeros(1, 8, 1, 1)))  # |0.5|, flat edges, KL 0
    tensor(0.5000)
    """
    edges = sum((torch.diff(rec, dim=d) - torch.diff(x, dim=d)).abs().mean() for d in (2, 3))
    kl = 0.5 * (q.mean**2 + q.std**2 - 1 - q.logvar).mean()
    return (rec - x).abs().mean() + edges + kl_weight * kl


def stage_vae(run: Run) -> AutoencoderKL:
    """Train the autoencoder and measure its scaling factor, 1 / std of the latents (SDXL's
    0.13025 was measured the same way on its data)."""
    data = load_data(run)
    torch.manual_seed(stage_seed(run, "vae"))
    vae = AutoencoderKL(NANO_VAE)

    def reconstruction_loss(x):
        q = vae.encode(x)
        return autoencoder_loss(x, vae.decode(q.sample()), q)

    def on_crops(rng):  # cheap: a convolutional model learns from 64 x 64 crops (8 x 8 latents)
        b, idx = pick(rng, data, 16)
        top, left = (int(rng.integers(0, n - 64 + 1)) for n in BUCKETS[b])
        return reconstruction_loss(to_images(data[b]["images"][idx, top:top + 64, left:left + 64]))

    def on_pictures(rng):  # but the mid-block attention must see the token count it is used at
        b, idx = pick(rng, data, 8)
        return reconstruction_loss(to_images(data[b]["images"][idx]))

    vae = fit(run, "vae", {"vae": vae}, on_crops, STEPS["vae"], lr=5e-4)["vae"]
    vae = vae.requires_grad_(True)  # continue from the averaged weights
    vae = fit(run, "vae_pictures", {"vae": vae}, on_pictures, STEPS["vae_pictures"], lr=2e-4, warmup=50)["vae"]
    with torch.no_grad():  # SDXL's recipe for the scale: unit variance of the latents
        z = torch.cat([vae.encode(to_images(d["images"][:500])).mean.flatten() for d in data])
    vae.scaling_factor = 1 / z.std().item()
    torch.save({"state": vae.state_dict(), "scaling_factor": vae.scaling_factor}, run.out / "vae.pt")
    return vae


def trained_vae(run: Run) -> AutoencoderKL:
    """The frozen autoencoder that the `vae` stage saved, with its scaling factor."""
    state = torch.load(run.out / "vae.pt", weights_only=True)
    vae = AutoencoderKL(NANO_VAE)
    vae.load_state_dict(state["state"])
    vae.scaling_factor = state["scaling_factor"]
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def stage_latents(run: Run) -> None:
    """Encode every picture once, scaled by the autoencoder's factor; and a degraded copy of a
    third of them at a random level (the refiner's aesthetic score), the rest standing as they
    are (level 0)."""
    vae, data = trained_vae(run), load_data(run)
    for (h, w), d in zip(BUCKETS, data):
        rng = np.random.default_rng(run.seed * 7 + h)
        n = len(d["images"])
        levels = np.where(rng.random(n) < 2 / 3, 0.0, rng.uniform(0, 1, n))
        clean = []
        for start in tqdm(range(0, n, 128), desc=f"latents {h}x{w}"):
            clean.append(vae.encode(to_images(d["images"][start:start + 128])).mean * vae.scaling_factor)
        clean = torch.cat(clean)
        degraded, worse = clean.clone(), np.flatnonzero(levels > 0)
        for start in tqdm(range(0, len(worse), 128), desc=f"degraded {h}x{w}"):
            idx = worse[start:start + 128]
            pictures = np.stack([degrade(d["images"][i], levels[i], rng) for i in idx])
            degraded[idx] = vae.encode(to_images(pictures)).mean * vae.scaling_factor
        np.savez(run.out / f"latents_{h}x{w}.npz", clean=clean.half().numpy(), degraded=degraded.half().numpy(),
                 levels=levels)


def stage_clip(run: Run):
    """Pretrain both text encoders and an image tower as CLIP was trained: contrastively, on
    the square bucket's pictures (`sdxl_edu.nano.clip`). SDXL takes its text encoders from
    CLIP pretraining and freezes them; so does nano. Returns the three towers, frozen."""
    data = load_data(run)[0]  # the square bucket: CLIP's image processor would crop the others
    torch.manual_seed(stage_seed(run, "clip"))
    te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    image_encoder, heads = new_image_encoder(), clip_heads()

    def loss_fn(rng):
        idx = rng.integers(0, len(data["images"]), 128)
        captions, _ = captions_for(rng, data["labels"][idx], 0)
        text_1, text_2 = clip_text_embeddings(te1, te2, heads, captions)
        image_1, image_2 = clip_image_embeddings(image_encoder, heads, clip_pixels(data["images"][idx]))
        same = same_caption(captions)
        return (contrastive_loss(text_1, image_1, same, heads.logit_scale)
                + contrastive_loss(text_2, image_2, same, heads.logit_scale))

    towers = {"text_encoder": te1, "text_encoder_2": te2, "image_encoder": image_encoder, "heads": heads}
    trained = fit(run, "clip", towers, loss_fn, STEPS["clip"], lr=1e-3)
    te1, te2, image_encoder = trained["text_encoder"], trained["text_encoder_2"], trained["image_encoder"]
    run.log(stage="clip", zero_shot=zero_shot_accuracy(te1, te2, image_encoder, trained["heads"], data))
    save_clip(run, te1, te2, image_encoder)


def save_clip(run: Run, te1, te2, image_encoder) -> None:
    """The three towers the later stages read (`trained_clip`), without the training heads."""
    torch.save({k: m.float().state_dict() for k, m in
                (("text_encoder", te1), ("text_encoder_2", te2), ("image_encoder", image_encoder))}, run.out / "clip.pt")


def trained_clip(run: Run):
    """The frozen text encoders and image tower that the `clip` stage saved."""
    state = torch.load(run.out / "clip.pt", weights_only=True)
    te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    towers = (te1, te2, new_image_encoder())
    for name, tower in zip(("text_encoder", "text_encoder_2", "image_encoder"), towers):
        tower.load_state_dict(state[name])
    return tuple(t.eval().requires_grad_(False) for t in towers)


def new_unet(run: Run, name: str, config, init=None) -> UNet:
    """A UNet from its config, initialised from the stage's seed; with `init` (a shipped
    pipeline), its weights in float32."""
    torch.manual_seed(stage_seed(run, name))
    unet = UNet(config)
    if init is not None:  # continue from a shipped pipeline
        unet.load_state_dict({k: v.float() for k, v in init.unet.state_dict().items()})
    return unet


def stage_base(run: Run, schedule: NoiseSchedule, text_encoders, init=None) -> None:
    """The base UNet on the cached latents, reading the frozen text encoders: the schedule's
    target (`NANO_SCHEDULER`'s: v), t uniform over 0..999, 10% of captions dropped (zero
    context and pooled)."""
    data, latents = load_data(run), load_latents(run)
    te1, te2 = text_encoders
    unet = new_unet(run, "base", NANO_BASE, init)
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
        return F.mse_loss(unet(x_t, t, context, y), schedule.training_target(x0, t, eps))

    fit(run, "base", {"unet": unet}, loss_fn, STEPS["base"], lr=3e-4)


def stage_refiner(run: Run, schedule: NoiseSchedule, text_encoder_2, init=None) -> None:
    """The refiner UNet on degraded latents at t < 200 only, told the aesthetic score of the
    degradation, reading the frozen second encoder."""
    data, latents = load_data(run), load_latents(run)
    unet = new_unet(run, "refiner", NANO_REFINER, init)
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
        return F.mse_loss(unet(x_t, t, context, y), schedule.training_target(x0, t, eps))

    fit(run, "refiner", {"unet": unet}, loss_fn, STEPS["refiner"], lr=3e-4)


def stage_classifiers(run: Run, schedule: NoiseSchedule, vae: AutoencoderKL) -> None:
    """The noise-aware classifier on q_sample(latents, t), then the evaluator on clean pictures,
    their reconstructions and degraded copies (`sdxl_edu.nano.classifiers`)."""
    data, latents = load_data(run), load_latents(run)
    torch.manual_seed(stage_seed(run, "classifier"))
    classifier, evaluator = SceneClassifier(), SceneEvaluator()

    def classifier_loss(rng):
        b, idx = pick(rng, data, 128)
        x_t, t, _ = noisy_latents(rng, schedule, torch.from_numpy(latents[b]["clean"][idx]).float())
        target = torch.from_numpy(presence(data[b]["labels"][idx]))
        return F.binary_cross_entropy_with_logits(classifier(x_t, t), target)

    fit(run, "classifier", {"m": classifier}, classifier_loss, STEPS["classifier"], lr=1e-3)

    def evaluator_loss(rng):
        b, idx = pick(rng, data, 32)
        images = data[b]["images"][idx]
        kind = rng.integers(3, size=len(idx))  # clean, reconstructed, degraded
        levels = np.where(kind == 2, rng.uniform(0.1, 1, len(idx)), 0.0)
        x = to_images(np.stack([degrade(im, lv, rng) for im, lv in zip(images, levels)]))
        recon = kind == 1
        with torch.no_grad():  # decode only the third that is shown as a reconstruction
            z = torch.from_numpy(latents[b]["clean"][idx[recon]]).float() / vae.scaling_factor
            x[torch.from_numpy(recon)] = vae.decode(z).clamp(-1, 1)
        out = evaluator(x)
        classes = np.stack([pair_classes(m[2::4, 2::4], lab) for m, lab in  # each 4 x 4 cell's centre
                            zip(data[b]["object_maps"][idx], data[b]["labels"][idx])])
        return (F.cross_entropy(out["segmentation"], torch.from_numpy(classes))
                + 5 * F.mse_loss(out["degradation"], torch.from_numpy(levels).float()))

    fit(run, "evaluator", {"m": evaluator}, evaluator_loss, STEPS["evaluator"], lr=1e-3)


def trained(run: Run, name: str, module: torch.nn.Module) -> torch.nn.Module:
    """The averaged (EMA) weights that stage `name` left in its last checkpoint, loaded into
    `module`, frozen."""
    (ema,) = torch.load(run.out / f"{name}.ckpt", weights_only=False)["emas"].values()  # our own file
    module.load_state_dict(ema)
    return module.eval().requires_grad_(False)


def shipped_image_encoder():
    """The shipped CLIP image tower (`weights/image_encoder`, safetensors), frozen."""
    from transformers import CLIPVisionModelWithProjection
    return CLIPVisionModelWithProjection.from_pretrained(WEIGHTS / "image_encoder", use_safetensors=True).float()


def stage_export(run: Run, weights: Path = WEIGHTS) -> None:
    """Write the EMA weights in fp16: the base and refiner as single files in the released
    layout, the tokenizers, the image tower and its image processor in transformers' layout
    (as the image variation pipelines ship CLIP's), and the two classifiers."""
    import safetensors.torch
    from transformers import CLIPImageProcessor

    from ..loading import save_single_file

    weights.mkdir(parents=True, exist_ok=True)
    vae = trained_vae(run)
    vae.config = dataclasses.replace(vae.config, scaling_factor=vae.scaling_factor)
    te1, te2, image_encoder = trained_clip(run)
    base, refiner = trained(run, "base", UNet(NANO_BASE)), trained(run, "refiner", UNet(NANO_REFINER))
    extra = {"default_size": BUCKETS[0][0], "scheduler": NANO_SCHEDULER}  # each file carries its own schedule
    for module in (vae, base, refiner, te1, te2):
        module.half()
    save_single_file(weights / "nano_sdxl_base.safetensors", base, vae, te2, te1, extra=extra)
    save_single_file(weights / "nano_sdxl_refiner.safetensors", refiner, vae, te2,
                     extra=dict(extra, scheduler=SDXL_SCHEDULE))
    tok, tok_2 = nano_tokenizers()
    tok.save_pretrained(weights / "tokenizer")
    tok_2.save_pretrained(weights / "tokenizer_2")
    image_encoder.half().save_pretrained(weights / "image_encoder", safe_serialization=True)
    size = VISION_LIKE["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_mean=CLIP_MEAN,
                       image_std=CLIP_STD).save_pretrained(weights / "feature_extractor")
    for name, model in (("nano_classifier", trained(run, "classifier", SceneClassifier())),
                        ("nano_evaluator", trained(run, "evaluator", SceneEvaluator()))):
        safetensors.torch.save_file({k: v.half().contiguous() for k, v in model.state_dict().items()},
                                    str(weights / f"{name}.safetensors"))
