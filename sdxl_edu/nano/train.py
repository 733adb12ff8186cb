"""Train nano SDXL: `python -m sdxl_edu.nano.train [--out runs/nano]`.

Stages, each resumable from its last checkpoint and deterministic given the seed:

1. `data`: render the dataset (`sdxl_edu.nano.data`), one array per aspect bucket;
2. `vae`: the KL autoencoder (L1 + edge + a tiny KL term, as LDM's first stage without the
   GAN), first on 32 x 32 crops, then on whole pictures (trained on crops only, its
   mid-block attention mixes colours across a whole 16 x 16 latent); then its scaling factor
   measured as SDXL's was: 1 / std of the training latents;
3. `latents`: encode every picture once, clean and degraded (the autoencoder is frozen from
   here on, so the UNets train on cached latents);
4. `clip`: both text encoders pretrained as CLIP was, contrastively against (latent) images,
   then frozen, as SDXL freezes the CLIP ViT-L and OpenCLIP bigG it borrows;
5. `base`: the base UNet, v-prediction on the zero-terminal-SNR schedule, t uniform over
   0..999; 10% of captions dropped by zeroing the context and pooled embedding, as SDXL's
   conditioner does, which is what makes classifier-free guidance possible;
6. `refiner`: the refiner UNet on t < 200 only, reading the (frozen) second encoder and an
   aesthetic score computed from the degradation applied to the picture;
7. `classifiers`: the noise-aware classifier (on noisy latents) and the evaluator (on clean
   pictures, their reconstructions and degraded copies);
8. `export`: single-file checkpoints in the released layout, tokenizers, classifiers, into
   `sdxl_edu/nano/weights/`.

Exponential moving averages of the weights are what gets exported, as for SDXL.
`--quick` runs every stage on 300 pictures a bucket for 3 steps each; tests/test_nano_train.py
runs it, and is the example for the stage functions.
`--continue-from-shipped` starts the UNets from the shipped weights (and keeps their text
encoders, frozen, and their autoencoder), so training can go on across sessions.
"""

import argparse
import copy
import dataclasses
import json
import math
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ..conditioning import vector_y
from ..schedule import NoiseSchedule
from ..text import tokenize
from .tokenizers import build_clip_tokenizer
from ..unet import UNet
from ..vae import AutoencoderKL
from . import BIGG_LIKE, CLIP_L_LIKE, NANO_BASE, NANO_REFINER, NANO_SCHEDULER, NANO_VAE, WEIGHTS
from .classifiers import Evaluator, NoisyClassifier
from .data import ATTRIBUTES, BUCKETS, COLOURS, POSITIONS, SHAPES, SIZES, VOCABULARY, aesthetic_score, degrade, \
    make_caption, make_sample

STAGES = ("data", "vae", "latents", "clip", "base", "refiner", "classifiers", "export")
STEPS = {"vae": 2000, "vae_pictures": 1500, "clip": 1500, "base": 9000, "refiner": 2000, "classifier": 900, "evaluator": 1200}
SAMPLES_PER_BUCKET = 16000


# ----------------------------------------------------------------------------- plumbing

class Run:
    """The output folder, the log, and checkpoints of a training run.

    >>> import tempfile
    >>> run = Run(Path(tempfile.mkdtemp()) / "run", seed=0)
    >>> run.done("data"), run.mark_done("data", pictures=3), run.done("data")
    (False, None, True)
    >>> run.log(stage="base", step=50, loss=0.5); (run.out / "log.jsonl").read_text().splitlines()
    ['{"stage": "base", "step": 50, "loss": 0.5}']
    """

    def __init__(self, out: Path, seed: int):
        self.out, self.seed = Path(out), seed
        self.out.mkdir(parents=True, exist_ok=True)

    def log(self, **entry) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def done(self, stage: str) -> bool:
        return (self.out / f"{stage}.done").exists()

    def mark_done(self, stage: str, **info) -> None:
        (self.out / f"{stage}.done").write_text(json.dumps(info))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float = 0.999) -> None:
    """ema <- d * ema + (1 - d) * model, with d = min(decay, (1 + step) / (10 + step)): the
    warm-up of d lets the average forget its random start quickly.

    >>> ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    >>> _ = ema.weight.data.fill_(0.0), model.weight.data.fill_(1.0)
    >>> ema_update(ema, model, step=0); round(ema.weight.item(), 3)  # d = 1/10
    0.9
    >>> ema_update(ema, model, step=10**6); round(ema.weight.item(), 4)  # d = 0.999
    0.9001
    """
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)


def fit(run: Run, name: str, modules: dict[str, torch.nn.Module], loss_fn, steps: int, lr: float,
        warmup: int = 200, every: int = 250) -> dict[str, torch.nn.Module]:
    """AdamW with warm-up and cosine decay, EMA copies, a checkpoint every `every` steps.
    `loss_fn(rng)` draws its own batch from the numpy generator, whose state is saved too, so
    a run stopped and started again ends where an uninterrupted one does. Returns the EMA modules.

    >>> import tempfile
    >>> def train(run, stop_at=None):
    ...     torch.manual_seed(0)
    ...     model, calls = torch.nn.Linear(2, 1), []
    ...     def loss_fn(rng):
    ...         calls.append(1)
    ...         if len(calls) == stop_at:
    ...             raise KeyboardInterrupt("the session ended")
    ...         x = torch.from_numpy(rng.standard_normal((8, 2))).float()
    ...         return (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
    ...     return fit(run, "toy", {"m": model}, loss_fn, steps=20, lr=0.1, warmup=2, every=5)["m"]
    >>> tmp = Path(tempfile.mkdtemp())
    >>> at_once = train(Run(tmp / "a", 0))
    >>> try:
    ...     train(Run(tmp / "b", 0), stop_at=13)  # interrupted: the last checkpoint is step 10
    ... except KeyboardInterrupt:
    ...     pass
    >>> resumed = train(Run(tmp / "b", 0))
    >>> torch.equal(at_once.weight, resumed.weight)
    True
    """
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    emas = {k: copy.deepcopy(m).requires_grad_(False) for k, m in modules.items()}
    stage_seed = run.seed * 1000 + zlib.crc32(name.encode()) % 1000  # stable across processes
    rng, step = np.random.default_rng(stage_seed), 0
    torch.manual_seed(stage_seed)
    ckpt = run.out / f"{name}.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        for k in modules:
            modules[k].load_state_dict(state["modules"][k])
            emas[k].load_state_dict(state["emas"][k])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state, step = state["rng"], state["step"]
        torch.set_rng_state(state["torch_rng"])
    bar = tqdm(total=steps, initial=step, desc=name)
    start, losses = time.time(), []
    while step < steps:
        for m in modules.values():
            m.train()
        loss = loss_fn(rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        for k in modules:
            ema_update(emas[k], modules[k], step)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0 or step == steps:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            run.log(stage=name, step=step, loss=float(np.mean(losses[-50:])), seconds=time.time() - start)
        if step % every == 0 or step == steps:
            torch.save({"modules": {k: m.state_dict() for k, m in modules.items()},
                        "emas": {k: m.state_dict() for k, m in emas.items()}, "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "rng": rng.bit_generator.state, "step": step,
                        "torch_rng": torch.get_rng_state()}, ckpt)
    bar.close()
    return {k: m.eval() for k, m in emas.items()}


def load_data(run: Run) -> list[dict]:
    """The `data` stage's arrays, one dict per bucket (images, masks, labels, original_size,
    crop_top_left, cut)."""
    return [dict(np.load(run.out / f"data_{h}x{w}.npz")) for h, w in BUCKETS]


def load_latents(run: Run) -> list[dict]:
    """The `latents` stage's arrays, one dict per bucket (clean, degraded, levels)."""
    return [dict(np.load(run.out / f"latents_{h}x{w}.npz")) for h, w in BUCKETS]


def pick(rng, data: list[dict], batch: int) -> tuple[int, np.ndarray]:
    """A bucket at random and `batch` indices into it (a batch holds one picture size).

    >>> data = [{"labels": np.zeros((10, 4))}, {"labels": np.zeros((3, 4))}]
    >>> b, idx = pick(np.random.default_rng(0), data, 5)
    >>> b in (0, 1), len(idx), bool(idx.max() < len(data[b]["labels"]))
    (True, 5, True)
    """
    b = int(rng.integers(len(data)))
    return b, rng.integers(0, len(data[b]["labels"]), batch)


def to_images(uint8: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 pictures -> (B, 3, H, W) floats in [-1, 1], as the autoencoder takes them.

    >>> to_images(np.array([[[[0, 255, 127]]]], dtype=np.uint8)).flatten().tolist()
    [-1.0, 1.0, -0.00392...]
    """
    return torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 127.5 - 1


# ----------------------------------------------------------------------------- stages

def stage_data(run: Run) -> None:
    """Render SAMPLES_PER_BUCKET pictures per aspect bucket with their ground truth, each bucket
    from its own seed."""
    for i, bucket in enumerate(BUCKETS):
        rng = np.random.default_rng(run.seed * 100 + i)
        samples = [make_sample(rng, bucket) for _ in tqdm(range(SAMPLES_PER_BUCKET), desc=f"data {bucket}")]
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


def new_text_encoders(vocab_size: int):
    """Untrained CLIP-L-like and bigG-like encoders (the second with a projection), transformers' classes.

    >>> te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    >>> te1.config.hidden_size, te2.config.hidden_size, te2.config.projection_dim
    (64, 128, 128)
    """
    common = dict(vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return (CLIPTextModel(CLIPTextConfig(**CLIP_L_LIKE, **common)),
            CLIPTextModelWithProjection(CLIPTextConfig(**BIGG_LIKE, **common)))


def nano_tokenizers():
    """CLIP BPE tokenizers over nano's vocabulary, padded as SDXL's: with end-of-text, and with "!".

    >>> tok, tok_2 = nano_tokenizers()
    >>> tok.pad_token, tok_2.pad_token, tok.model_max_length
    ('<|endoftext|>', '!', 77)
    """
    return build_clip_tokenizer(VOCABULARY), build_clip_tokenizer(VOCABULARY, pad_token="!")


def captions_for(rng, labels: np.ndarray, dropout: float) -> tuple[list[str], np.ndarray]:
    """Fresh captions for stored labels (attributes left out at random), and which are dropped.

    >>> small_red_circle_left = np.array([[0, 0, 0, 0]] * 200)  # indices into each ATTRIBUTES tuple
    >>> caps, dropped = captions_for(np.random.default_rng(0), small_red_circle_left, 0.1)
    >>> caps[:4]
    ['a small red circle on the left', 'a small circle', 'a small red circle on the left', 'a circle on the left']
    >>> float(dropped.mean())  # about a tenth, for classifier-free guidance
    0.08
    """
    caps = [make_caption(rng, SHAPES[s], list(COLOURS)[c], POSITIONS[p], SIZES[z]) for s, c, p, z in labels]
    return caps, rng.random(len(caps)) < dropout


def micro_ids(d: dict, idx: np.ndarray, last: np.ndarray) -> torch.Tensor:
    """(B, 6) or (B, 5): original size, crop top-left, and the target size or aesthetic score.

    >>> d = {"original_size": np.array([[32, 40]]), "crop_top_left": np.array([[0, 8]])}
    >>> micro_ids(d, np.array([0]), np.array([[64, 64]])).tolist()
    [[32.0, 40.0, 0.0, 8.0, 64.0, 64.0]]
    """
    return torch.from_numpy(np.concatenate([d["original_size"][idx], d["crop_top_left"][idx], last], 1)).float()


class ImageTower(torch.nn.Module):
    """CLIP's image encoder in miniature, on cached latents: convolutions, global average
    pooling, and one projection per text encoder. Used only to pretrain the text encoders.

    >>> [v.shape for v in ImageTower((128, 64))(torch.randn(2, 4, 16, 12))]  # any bucket's latents
    [torch.Size([2, 128]), torch.Size([2, 64])]
    """

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.trunk = torch.nn.Sequential(
            torch.nn.Conv2d(4, 64, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(128, 128, 3, stride=2, padding=1), torch.nn.SiLU())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(128, d) for d in dims)

    def forward(self, latents: torch.Tensor) -> list[torch.Tensor]:
        features = self.trunk(latents).mean((2, 3))
        return [head(features) for head in self.heads]


def contrastive_loss(text: torch.Tensor, image: torch.Tensor, same: torch.Tensor, logit_scale) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over cosine similarities, logits = s * <t_i, v_j>.
    A batch of our captions repeats itself ("a circle" many times), so every image whose
    caption is the same counts as a match: the target is spread over them (`same`, rows summing to 1).

    >>> text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # captions A, B, A
    >>> same = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]]) / torch.tensor([[2.0], [1.0], [2.0]])
    >>> scale = torch.tensor(math.log(100))
    >>> round(contrastive_loss(text, text, same, scale).item(), 3)  # images that match: only ln 2 is left
    0.462
    >>> round(contrastive_loss(text, text.flip(1), same, scale).item(), 1)  # every image matched to the other caption
    100.2
    """
    logits = logit_scale.exp().clamp(max=100) * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    return (F.cross_entropy(logits, same) + F.cross_entropy(logits.T, same.T)) / 2


def stage_clip(run: Run):
    """Pretrain both text encoders as CLIP was trained: contrastively against images, here
    nano's latents. SDXL takes its text encoders from CLIP pretraining and freezes them; so does
    nano. The first encoder's pooled output (end-of-text token, last layer) gets a projection of
    its own for this stage only, as SDXL's CLIP ViT-L ships without one. Returns the encoders,
    frozen."""
    data, latents = load_data(run), load_latents(run)
    te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    heads = torch.nn.ModuleDict({"projection_1": torch.nn.Linear(CLIP_L_LIKE["hidden_size"], 128, bias=False),
                                 "image": ImageTower((128, BIGG_LIKE["projection_dim"]))})
    heads.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss_fn(rng):
        b, idx = pick(rng, data, 256)
        captions, _ = captions_for(rng, data[b]["labels"][idx], 0)
        text_1, text_2 = clip_text_embeddings(te1, te2, heads, captions)
        image_1, image_2 = heads.image(torch.from_numpy(latents[b]["clean"][idx]).float())
        same = torch.tensor([[a == c for c in captions] for a in captions]).float()
        same = same / same.sum(1, keepdim=True)
        return (contrastive_loss(text_1, image_1, same, heads.logit_scale)
                + contrastive_loss(text_2, image_2, same, heads.logit_scale))

    trained = fit(run, "clip", {"text_encoder": te1, "text_encoder_2": te2, "heads": heads}, loss_fn,
                  STEPS["clip"], lr=1e-3)
    te1, te2, heads = trained["text_encoder"], trained["text_encoder_2"], trained["heads"]
    run.log(stage="clip", zero_shot=zero_shot_accuracy(te1, te2, heads, latents, data))
    return te1.requires_grad_(False), te2.requires_grad_(False)


def clip_text_embeddings(te1, te2, heads, captions: list[str]) -> list[torch.Tensor]:
    """Each encoder's caption embedding in the space it shares with the image tower: the
    pooled output (end-of-text token, last layer) through a projection, the first encoder's
    from `heads.projection_1`, the second's its own. Only the tokens up to the longest
    caption's end-of-text run: the encoders are causal, so later ones cannot change it.

    >>> te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    >>> heads = torch.nn.ModuleDict({"projection_1": torch.nn.Linear(64, 128)})
    >>> [e.shape for e in clip_text_embeddings(te1, te2, heads, ["a circle", "a small red square"])]
    [torch.Size([2, 128]), torch.Size([2, 128])]
    """
    tok, tok_2 = nano_tokenizers()
    ids1, ids2 = tokenize(tok, captions), tokenize(tok_2, captions)
    length = int((ids1 == tok.eos_token_id).int().argmax(-1).max()) + 1
    return [heads.projection_1(te1(ids1[:, :length]).pooler_output), te2(ids2[:, :length]).text_embeds]


@torch.no_grad()
def zero_shot_accuracy(te1, te2, heads, latents: list[dict], data: list[dict], n: int = 256) -> dict:
    """CLIP's zero-shot test: the caption closest to a picture among all 15 "a {colour} {shape}",
    read as a shape and a colour, for each encoder; n pictures per bucket. Untrained, it is
    near chance (a third for the shape, a fifth for the colour).

    >>> te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    >>> heads = torch.nn.ModuleDict({"projection_1": torch.nn.Linear(64, 128), "image": ImageTower((128, 128))})
    >>> latents = [{"clean": np.random.default_rng(0).standard_normal((8, 4, 16, 16), dtype=np.float32)}]
    >>> data = [{"labels": np.zeros((8, 4), dtype=int)}]
    >>> accuracy = zero_shot_accuracy(te1, te2, heads, latents, data, n=8)
    >>> sorted(accuracy), all(0 <= v <= 1 for v in accuracy.values())
    (['text_encoder_1_colour', 'text_encoder_1_shape', 'text_encoder_2_colour', 'text_encoder_2_shape'], True)
    """
    pairs = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
    prompts = [f"a {list(COLOURS)[c]} {SHAPES[s]}" for s, c in pairs]
    texts = [F.normalize(e, dim=-1) for e in clip_text_embeddings(te1, te2, heads, prompts)]
    result = {}
    for i, text in enumerate(texts, 1):
        hits = {"shape": [], "colour": []}
        for bucket_latents, bucket_data in zip(latents, data):
            image = F.normalize(heads.image(torch.from_numpy(bucket_latents["clean"][:n]).float())[i - 1], dim=-1)
            best = np.array(pairs)[(image @ text.T).argmax(-1).numpy()]
            hits["shape"] += list(best[:, 0] == bucket_data["labels"][:n, 0])
            hits["colour"] += list(best[:, 1] == bucket_data["labels"][:n, 1])
        result.update({f"text_encoder_{i}_{k}": float(np.mean(v)) for k, v in hits.items()})
    return result


def stage_base(run: Run, schedule: NoiseSchedule, text_encoders, init=None):
    """The base UNet on the cached latents, reading the frozen text encoders: v-prediction, t
    uniform over 0..999, 10% of captions dropped (zero context and pooled)."""
    data, latents = load_data(run), load_latents(run)
    te1, te2 = text_encoders
    unet = UNet(NANO_BASE)
    if init is not None:  # continue from a shipped pipeline
        unet.load_state_dict({k: v.float() for k, v in init.unet.state_dict().items()})
    alphas_cumprod = schedule.alphas_cumprod
    encode = frozen_text_embeddings(te1, te2)

    def loss_fn(rng):
        b, idx = pick(rng, data, 64)
        x0 = torch.from_numpy(latents[b]["clean"][idx]).float()
        captions, dropped = captions_for(rng, data[b]["labels"][idx], 0.1)
        context, pooled = encode(captions)
        keep = torch.from_numpy(~dropped).float()
        context, pooled = context * keep[:, None, None], pooled * keep[:, None]
        target_size = np.tile(BUCKETS[b], (len(idx), 1))
        y = vector_y(pooled, micro_ids(data[b], idx, target_size))
        t = torch.from_numpy(rng.integers(0, 1000, len(idx)))
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        ab = alphas_cumprod[t][:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        return F.mse_loss(unet(x_t, t, context, y), v)

    unet = fit(run, "base", {"unet": unet}, loss_fn, STEPS["base"], lr=3e-4)["unet"]
    return {"text_encoder": te1, "text_encoder_2": te2, "unet": unet}


def frozen_text_embeddings(te1, te2):
    """captions -> (context, pooled) from the frozen encoders, remembered per caption: nano's
    captions come from a few hundred, so the encoders run once for each. The context is both
    penultimate layers side by side (the base's), or the second's alone when `te1` is None (the
    refiner's); the pooled vector is the second's projection.

    >>> te1, te2 = new_text_encoders(len(nano_tokenizers()[0]))
    >>> calls = []
    >>> _ = te2.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    >>> encode = frozen_text_embeddings(te1, te2)
    >>> context, pooled = encode(["a circle", "a red square", "a circle"])
    >>> context.shape, pooled.shape, torch.equal(context[0], context[2])
    (torch.Size([3, 77, 192]), torch.Size([3, 128]), True)
    >>> _ = encode(["a red square", "a blue square"]); calls  # only the new caption was encoded
    [2, 1]
    >>> frozen_text_embeddings(None, te2)(["a circle"])[0].shape  # the refiner's context
    torch.Size([1, 77, 128])
    """
    tok, tok_2 = nano_tokenizers()
    seen = {}

    @torch.no_grad()
    def encode(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        new = sorted(set(captions) - seen.keys())
        if new:
            out2 = te2(tokenize(tok_2, new), output_hidden_states=True)
            context = out2.hidden_states[-2]
            if te1 is not None:  # the base reads both encoders
                h1 = te1(tokenize(tok, new), output_hidden_states=True).hidden_states[-2]
                context = torch.cat([h1, context], -1)
            seen.update({c: (context[i], out2.text_embeds[i]) for i, c in enumerate(new)})
        return (torch.stack([seen[c][0] for c in captions]), torch.stack([seen[c][1] for c in captions]))

    return encode


def stage_refiner(run: Run, schedule: NoiseSchedule, text_encoder_2, init=None) -> UNet:
    """The refiner UNet on degraded latents at t < 200 only, told the aesthetic score of the
    degradation, reading the frozen second encoder."""
    data, latents = load_data(run), load_latents(run)
    unet = UNet(NANO_REFINER)
    if init is not None:
        unet.load_state_dict({k: v.float() for k, v in init.unet.state_dict().items()})
    alphas_cumprod = schedule.alphas_cumprod
    encode = frozen_text_embeddings(None, text_encoder_2.requires_grad_(False))

    def loss_fn(rng):
        b, idx = pick(rng, data, 32)
        x0 = torch.from_numpy(latents[b]["degraded"][idx]).float()
        captions, dropped = captions_for(rng, data[b]["labels"][idx], 0.1)
        captions = ["" if d else c for c, d in zip(captions, dropped)]  # the refiner's unconditional is ""
        context, pooled = encode(captions)
        scores = np.array([[aesthetic_score(lv)] for lv in latents[b]["levels"][idx]])
        y = vector_y(pooled, micro_ids(data[b], idx, scores))
        t = torch.from_numpy(rng.integers(0, 200, len(idx)))  # the refiner sees low noise only
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        ab = alphas_cumprod[t][:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        return F.mse_loss(unet(x_t, t, context, y), v)

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
    alphas_cumprod = schedule.alphas_cumprod

    def classifier_loss(rng):
        b, idx = pick(rng, data, 128)
        x0 = torch.from_numpy(latents[b]["clean"][idx]).float()
        t = torch.from_numpy(rng.integers(0, 1000, len(idx)))
        ab = alphas_cumprod[t][:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
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

    from ..loading.single_file import save_single_file

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


def main(argv=None) -> None:
    """The command line: every stage not yet done, in order; `--stages` picks some.

    >>> main(["--steps", "unet=100"])
    Traceback (most recent call last):
    SystemExit: 2
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/nano")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--weights", default=str(WEIGHTS), help="where `export` writes the shipped files")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything: a smoke test")
    parser.add_argument("--steps", default="", help="override step counts, e.g. base=6000,evaluator=2500 (a stage "
                                                    "resumes from its checkpoint and trains on to the new count)")
    parser.add_argument("--continue-from-shipped", action="store_true",
                        help="start the UNets from the shipped weights and take their text encoders and "
                             "autoencoder as it is (a session's training does not outlive the session)")
    args = parser.parse_args(argv)
    if args.quick:
        global SAMPLES_PER_BUCKET
        SAMPLES_PER_BUCKET = 300
        STEPS.update({k: 3 for k in STEPS})
    for item in filter(None, args.steps.split(",")):
        stage, count = item.split("=")
        if stage not in STEPS:
            parser.error(f"--steps: no stage {stage!r}; the stages with steps are {', '.join(STEPS)}")
        STEPS[stage] = int(count)
    if args.threads:
        torch.set_num_threads(args.threads)
    run, schedule = Run(Path(args.out), args.seed), NoiseSchedule.from_config(NANO_SCHEDULER)
    wanted = args.stages.split(",")
    if "data" in wanted and not run.done("data"):
        stage_data(run)
        run.mark_done("data")
    shipped = shipped_refiner = None
    if args.continue_from_shipped:
        from ..loading import load_pipeline
        from . import BASE_FILE, REFINER_FILE

        shipped, shipped_refiner = load_pipeline(BASE_FILE), load_pipeline(REFINER_FILE)
        if not run.done("vae"):
            torch.save({"state": {k: v.float() for k, v in shipped.vae.state_dict().items()},
                        "scaling_factor": shipped.vae.scaling_factor}, run.out / "vae.pt")
            run.mark_done("vae", scaling_factor=shipped.vae.scaling_factor, source="shipped")
    if "vae" in wanted and not run.done("vae"):
        stage_vae(run)
        run.mark_done("vae", scaling_factor=trained_vae(run).scaling_factor)
    if "latents" in wanted and not run.done("latents"):
        stage_latents(run)
        run.mark_done("latents")
    base = None
    if {"clip", "base", "refiner", "export"} & set(wanted):
        text_encoders = ((shipped.text_encoder.float(), shipped.text_encoder_2.float()) if shipped is not None
                         else stage_clip(run))
        run.mark_done("clip")
        if {"base", "refiner", "export"} & set(wanted):
            base = stage_base(run, schedule, text_encoders, shipped)
            run.mark_done("base")
    if {"refiner", "export"} & set(wanted):
        refiner = stage_refiner(run, schedule, base["text_encoder_2"], shipped_refiner)
        run.mark_done("refiner")
    if {"classifiers", "export"} & set(wanted):
        classifier, evaluator = stage_classifiers(run, schedule, trained_vae(run))
        run.mark_done("classifiers")
    if "export" in wanted:
        stage_export(run, trained_vae(run), base, refiner, classifier, evaluator, Path(args.weights))
        run.mark_done("export")


if __name__ == "__main__":
    main()
