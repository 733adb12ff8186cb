# What would let nano Reimagine draw two objects: a second path for the embedding, width, or an exact input?
# nano Reimagine, as SD 2.1 unCLIP, reads the CLIP image embedding only through y, a shift of the timestep
# embedding with no place in it; its variations of two distinct objects keep both in 18% although the
# embedding binds colour to shape (`reimagine_binding.py`). DALL-E 2's decoder also projects the embedding
# into four extra tokens of cross-attention context (Ramesh et al. 2022, section 2.1). Four runs, the same
# in all else (stage_reimagine's loss, batch, learning rate, seeds and data), trained from scratch:
#   y       the shipped recipe
#   tokens  y, and the noised embedding (y's first half) projected into 4 tokens appended to the context;
#           when y is dropped (zeros, training's dropout and guidance's unconditional branch) the tokens
#           are the projection's bias
#   wide    y, with every level twice as wide, channels (64, 128, 128): 3.8x the UNet's parameters (10.0M
#           against 2.6M; 19 MiB in fp16, past issue 18's 10 MiB file). Does capacity bind two objects?
#           Rule, written before scoring: capacity helps if two distinct objects are both kept more often
#           than y's 18.8% [13.9, 24.9] at the same 2500 steps with the difference's interval clear of
#           zero; it explains the gap if it also passes the narrow UNet's plateau (28.6% at 18000 steps)
#   oracle  y, with the CLIP embedding replaced by the scene's truth: how much of each of the 15 (shape, colour)
#           pairs it shows (each object counted by its visible fraction), tiled to the embedding's 128
#           dimensions. An input that binds colour to shape exactly: can y, a per-channel shift, carry
#           binding at all? Rule, written before scoring: the y path can bind if two distinct objects are
#           both kept more often than y's 18.8% with the difference's interval clear of zero
# Data: 16,000 square scenes from seed 90,000 (never scored), encoded by the shipped autoencoder; cached in
# runs/probes/reimagine_data.npz by `python .../reimagine_tokens.py data`. Scored as `reimagine_binding.py`
# scores the shipped model: variations of the validation scenes (seed 60,000), generation seeds 10-13.
# Usage, from the repository root: python training/nano2/probes/reimagine_tokens.py data | MODE STEPS [THREADS]
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdxl_edu.loading import load_variation_pipeline
from sdxl_edu.model.unet import UNet
from sdxl_edu.nano import EVALUATOR_FILE, WEIGHTS
from sdxl_edu.nano.batches import noisy_latents, to_images
from sdxl_edu.nano.bench import rate
from sdxl_edu.nano.classifiers import load_evaluator
from sdxl_edu.nano.data import COLOURS, SHAPES
from sdxl_edu.nano.loop import Run, fit
from sdxl_edu.nano.reimagine import (NANO_REIMAGINE, REIMAGINE_SCHEDULER, embedding_statistics, empty_prompt_context,
                                     picture_embeddings, training_y)
from sdxl_edu.nano.reimagine_bench import by_objects, compare, input_scenes
from sdxl_edu.nano.scene_reading import read_objects
from sdxl_edu.nano.scenes import BUCKETS, make_scene
from sdxl_edu.nano.stages import trained, trained_vae
from sdxl_edu.sampling.schedule import NoiseSchedule

cache = Path("runs/probes/reimagine_data.npz")
pipe = load_variation_pipeline(WEIGHTS / "nano_reimagine.safetensors")


class TokenUNet(UNet):
    """nano Reimagine's UNet with DALL-E 2's second path: the noised embedding as `tokens` extra
    context tokens."""

    def __init__(self, config, tokens: int = 4):
        super().__init__(config)
        self.tokens = tokens
        self.embedding_tokens = torch.nn.Linear(config.adm_in_channels // 2, tokens * config.context_dim)

    def forward(self, x, t, context, y=None):
        extra = self.embedding_tokens(y[:, :y.shape[1] // 2]).unflatten(1, (self.tokens, -1))
        return super().forward(x, t, torch.cat([context, extra.to(context.dtype)], dim=1), y)


def new_unet(mode: str) -> UNet:
    """The run's UNet: the shipped config, with context tokens or twice the width."""
    if mode == "tokens":
        return TokenUNet(NANO_REIMAGINE)
    return UNet(dataclasses.replace(NANO_REIMAGINE, channels=(64, 128, 128)) if mode == "wide" else NANO_REIMAGINE)


def data_scenes(n: int = 16_000) -> list:
    """The training scenes, regenerated in the order `make_data` encoded them."""
    rng = np.random.default_rng(90_000)
    return [make_scene(rng, BUCKETS[0]) for _ in range(n)]


def oracle_embeddings(scenes) -> torch.Tensor:
    """(N, 128): each scene's visible amount of every (shape, colour) pair, the 15 values tiled."""
    pairs = [(shape, colour) for shape in SHAPES for colour in COLOURS]
    truth = torch.zeros(len(scenes), len(pairs))
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            truth[i, pairs.index((o.shape, o.colour))] += o.visible
    width = NANO_REIMAGINE.adm_in_channels // 2
    return truth.repeat(1, width // len(pairs) + 1)[:, :width]


@torch.no_grad()
def make_data(n: int = 16_000) -> None:
    images = np.stack([scene.image for scene in data_scenes(n)])
    vae = trained_vae(Run(Path("training/nano2"), 0))
    latents = torch.cat([vae.encode(to_images(images[i:i + 128])).mean * vae.scaling_factor
                         for i in range(0, n, 128)])
    np.savez(cache, latents=latents.numpy(), embeds=picture_embeddings(pipe.image_encoder, images).numpy())


def train(mode: str, steps: int) -> torch.nn.Module:
    data = np.load(cache)
    latents, embeds = torch.from_numpy(data["latents"]), torch.from_numpy(data["embeds"])
    if mode == "oracle":
        embeds = oracle_embeddings(data_scenes(len(embeds)))
    augment = embedding_statistics(embeds)
    context = empty_prompt_context(pipe.text_encoder_2)
    schedule = NoiseSchedule.from_config(REIMAGINE_SCHEDULER)
    run = Run(Path(f"runs/probes/reimagine_{mode}"), seed=0)
    torch.manual_seed(0)
    unet = new_unet(mode)

    def loss_fn(rng, batch=64):
        idx = rng.integers(0, len(embeds), batch)
        y = training_y(rng, augment, embeds[idx])
        x_t, t, eps = noisy_latents(rng, schedule, latents[idx])
        return F.mse_loss(unet(x_t, t, context.expand(batch, -1, -1), y),
                          schedule.training_target(latents[idx], t, eps))

    fit(run, "reimagine", {"unet": unet}, loss_fn, steps, lr=3e-4)
    pipe.noise_augmentor = augment
    return trained(run, "reimagine", new_unet(mode))


def score(mode: str, steps: int) -> None:
    evaluator = load_evaluator(WEIGHTS / EVALUATOR_FILE.name)
    for name, scenes in by_objects(input_scenes(150, seed=60_000)).items():
        images = [Image.fromarray(sc.image) for sc in scenes]
        kept, counts, swapped, read = [], [], [], []
        for seed in range(10, 14):
            given = dict(image_embeds=oracle_embeddings(scenes)) if mode == "oracle" else dict(image=images)
            variations = pipe(**given, seed=seed, num_inference_steps=20, progress=False).images
            for sc, objects in zip(scenes, read_objects(evaluator, variations)):
                kept.append(compare(sc, objects)[0])
                counts.append(len(objects) == len(sc.objects))
                swapped.append(bool(swaps(sc, objects)))
                read.append(len(objects))
        k, c = rate(kept), rate(counts)
        print(f"{mode} {steps}, {name}: every object kept {100 * k['rate']:.1f}% [{100 * k['low']:.1f}, "
              f"{100 * k['high']:.1f}] of {k['n']}; as many objects as the input {100 * c['rate']:.1f}% "
              f"[{100 * c['low']:.1f}, {100 * c['high']:.1f}]; one's colour on another's shape "
              f"{100 * np.mean(swapped):.1f}%; median objects read {np.median(read):g}", flush=True)


def swaps(scene, objects) -> set:
    """The (shape, colour) pairs read that join one input object's shape to another's colour."""
    truth = {(o.shape, o.colour) for o in scene.objects}
    crossed = {(a.shape, b.colour) for a in scene.objects for b in scene.objects} - truth
    return crossed & {(r.shape, r.colour) for r in objects}


if __name__ == "__main__":  # `reimagine_continued.py` imports TokenUNet and score
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    if sys.argv[1] == "data":
        make_data()
    else:
        pipe.unet = train(sys.argv[1], int(sys.argv[2]))
        score(sys.argv[1], int(sys.argv[2]))
