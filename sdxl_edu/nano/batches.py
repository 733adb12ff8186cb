"""What one training step of nano SDXL reads: a batch from the cache, and its conditioning.

The `data` and `latents` stages cache the dataset as arrays, one file per aspect bucket
(SDXL trains with aspect-ratio buckets, paper section 2.3: a batch holds one picture size).
A training step then

1. picks a bucket and indices into it (`pick`);
2. writes fresh captions for the stored labels, attributes left out at random, and drops
   some of them for classifier-free guidance (`captions_for`);
3. encodes the captions with the frozen text encoders through the library's `Conditioner`
   (`frozen_text_embeddings`), and the micro-conditioning numbers with the library's
   `micro_conditioning_ids` (`micro_ids`);
4. noises the latents with the library's `NoiseSchedule.q_sample` at random timesteps
   (`noisy_latents`): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

Every random draw comes from the stage's numpy generator `rng`, in this order, so a run is
reproducible and resumable (`sdxl_edu.nano.loop.fit`).
"""

import numpy as np
import torch

from ..model.conditioning import Conditioner, micro_conditioning_ids
from ..sampling.schedule import NoiseSchedule
from .data import VOCABULARY
from .scenes import BUCKETS, captions_from_labels
from .loop import Run
from .tokenizers import build_clip_tokenizer


def load_data(run: Run) -> list[dict]:
    """The `data` stage's arrays, one dict per bucket (images, object_maps, labels,
    original_size, crop_top_left, framed)."""
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


def captions_for(rng, labels: np.ndarray, dropout: float) -> tuple[list[str], np.ndarray]:
    """Fresh captions for stored scene labels (attributes left out at random, objects in random
    order), and which of them are dropped.

    >>> small_red_circle_left = np.array([[[0, 0, 0, 0, 1], [-1] * 5, [-1] * 5]] * 200)  # one object per scene
    >>> caps, dropped = captions_for(np.random.default_rng(0), small_red_circle_left, 0.1)
    >>> caps[:4]
    ['a small red circle on the left', 'a small circle', 'a small red circle on the left', 'a circle on the left']
    >>> float(dropped.mean())  # about a tenth, for classifier-free guidance
    0.08
    """
    caps = [captions_from_labels(rng, scene) for scene in labels]
    return caps, rng.random(len(caps)) < dropout


def micro_ids(d: dict, idx: np.ndarray, target_size: tuple[int, int] | None = None,
              aesthetic_scores: list[float] | None = None) -> torch.Tensor:
    """(B, 6) for the base or (B, 5) for the refiner: each picture's original size and crop
    top-left, then the bucket's target size or its aesthetic score, in the order
    `micro_conditioning_ids` gives the UNet.

    >>> d = {"original_size": np.array([[32, 40]]), "crop_top_left": np.array([[0, 8]])}
    >>> micro_ids(d, np.array([0]), target_size=(64, 64)).tolist()
    [[32.0, 40.0, 0.0, 8.0, 64.0, 64.0]]
    >>> micro_ids(d, np.array([0, 0]), aesthetic_scores=[6.5, 1.5])[:, -1].tolist()
    [6.5, 1.5]
    """
    scores = aesthetic_scores if aesthetic_scores is not None else [None] * len(idx)
    return torch.stack([micro_conditioning_ids(d["original_size"][i], d["crop_top_left"][i], target_size, score)
                        for i, score in zip(idx, scores)])


def noisy_latents(rng, schedule: NoiseSchedule, x0: torch.Tensor, t_max: int = 1000, t_min: int = 0):
    """x_t = q_sample(x0, t, eps) with t uniform over t_min .. t_max - 1 and eps ~ N(0, I), drawn
    in that order from `rng`. Returns (x_t, t, eps); the UNet's target is
    `schedule.training_target(x0, t, eps)`. A narrower range trains one part of the schedule
    only (a refiner's low t, or a probe's noisy half).

    >>> from sdxl_edu.nano import NANO_SCHEDULER
    >>> schedule = NoiseSchedule.from_config(NANO_SCHEDULER)
    >>> x_t, t, eps = noisy_latents(np.random.default_rng(0), schedule, torch.ones(3, 4, 2, 2), t_max=200)
    >>> x_t.shape, bool(t.max() < 200), torch.equal(x_t, schedule.q_sample(torch.ones(3, 4, 2, 2), t, eps))
    (torch.Size([3, 4, 2, 2]), True, True)
    >>> bool(noisy_latents(np.random.default_rng(0), schedule, torch.ones(64, 4, 2, 2), t_min=500)[1].min() >= 500)
    True
    """
    t = torch.from_numpy(rng.integers(t_min, t_max, len(x0)))
    eps = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
    return schedule.q_sample(x0, t, eps), t, eps


def nano_tokenizers():
    """CLIP BPE tokenizers over nano's vocabulary, padded as SDXL's: with end-of-text, and with "!".

    >>> tok, tok_2 = nano_tokenizers()
    >>> tok.pad_token, tok_2.pad_token, tok.model_max_length
    ('<|endoftext|>', '!', 77)
    """
    return build_clip_tokenizer(VOCABULARY), build_clip_tokenizer(VOCABULARY, pad_token="!")


def frozen_text_embeddings(te1, te2, limit: int = 20_000):
    """captions -> (context, pooled) from the frozen encoders, as the pipeline computes them
    (`Conditioner.encode_text`), remembered per caption (up to `limit` of them): the short
    captions recur often, so the encoders run once for each. The context is both penultimate layers side by
    side (the base's), or the second's alone when `te1` is None (the refiner's); the pooled
    vector is the second's projection.

    >>> from sdxl_edu.nano.clip import new_text_encoders
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
    >>> small = frozen_text_embeddings(None, te2, limit=2)
    >>> _ = small(["", "a circle"]); small(["", "a red square"])[0].shape  # full: forgets all, keeps the batch's
    torch.Size([2, 77, 128])
    """
    tok, tok_2 = nano_tokenizers()
    conditioner = Conditioner(tok, te1, tok_2, te2)  # with te1 None: the second encoder alone
    seen = {}

    def encode(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        new = sorted(set(captions) - seen.keys())
        if len(seen) + len(new) > limit:  # scenes have too many captions to keep them all
            seen.clear()
            new = sorted(set(captions))
        if new:
            context, pooled = conditioner.encode_text(new)  # under no_grad: the encoders are frozen
            seen.update({c: (context[i], pooled[i]) for i, c in enumerate(new)})
        return (torch.stack([seen[c][0] for c in captions]), torch.stack([seen[c][1] for c in captions]))

    return encode
