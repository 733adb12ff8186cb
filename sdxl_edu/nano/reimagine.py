"""nano Reimagine: Stable unCLIP's recipe on nano's scenes (image variations).

SD Reimagine is Stability's image-variations model, SD 2.1 unCLIP: a Stable Diffusion UNet
whose vector y carries a picture's CLIP image embedding, noise-augmented, instead of pooled
text (`sdxl_edu.model.unclip`). nano Reimagine follows its released recipe
(`v2-1-stable-unclip-*-inference.yaml`) wherever it holds:

| | SD 2.1 unCLIP | nano Reimagine |
|---|---|---|
| UNet | SD 2.1's, 320-640-1280-1280, y = 2 x 768 or 2 x 1024 | 32-64-64, ResBlocks 1-2-2, attention 0-1-1, y = 2 x 128 |
| picture embedding | CLIP ViT-L/14 or OpenCLIP ViT-H/14, frozen | nano's image tower (the `clip` stage's), frozen |
| noise augmentation | squared-cosine, 1000 levels, uniform in training | the same |
| embedding dropout | 25% (y = 0) | the same |
| text | OpenCLIP ViT-H, penultimate layer through ln_final; captions | nano's second encoder, so read; the empty prompt |
| target | v on SD's scaled-linear schedule | the same |
| data | LAION pictures, 768 x 768 | the square bucket's scenes, 128 x 128 |

The whole file (UNet 2.6M parameters, autoencoder, second text encoder and image tower, in
fp16) stays under 10 MB: one ResBlock at the first level instead of two is what buys that.
The released model keeps training on captions; nano's always reads the empty prompt, so
that everything it knows of a picture comes through the embedding (the issue asks it
so). It trains on the square bucket only: CLIP's processor reads the centre square of a
picture, which for a square picture is all of it.

`stage_reimagine` is a stage of `sdxl_edu.nano.train`; `export_reimagine` writes the single
file `load_variation_pipeline` reads.
"""

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import UNetConfig
from ..model.conditioning import Conditioner
from ..model.unclip import EMBEDDING_DROPOUT, CLIPEmbeddingNoiseAugmentation, drop_embeddings, image_embeddings
from ..model.unet import UNet
from ..sampling.schedule import NoiseSchedule
from . import SDXL_SCHEDULE, VISION_LIKE
from .batches import load_data, load_latents, nano_tokenizers, noisy_latents
from .clip import clip_pixels
from .loop import Run, fit
from .stages import STEPS, new_unet, trained, trained_clip, trained_vae

NANO_REIMAGINE = UNetConfig(channels=(32, 64, 64), num_res_blocks=(1, 2, 2), transformer_depth=(0, 1, 1),
                            transformer_depth_middle=1, num_head_channels=32, context_dim=128,
                            adm_in_channels=2 * VISION_LIKE["projection_dim"])
REIMAGINE_SCHEDULER = dict(SDXL_SCHEDULE, prediction_type="v_prediction")  # SD 2.1's target on SD's betas
SQUARE = 0  # the square bucket's index in `scenes.BUCKETS`


@torch.no_grad()
def picture_embeddings(image_encoder, images: np.ndarray, batch: int = 500) -> torch.Tensor:
    """CLIP image embeddings (N, d) of (N, H, W, 3) uint8 pictures, prepared as the pipeline
    prepares them (`clip_pixels`).

    >>> from sdxl_edu.nano.clip import new_image_encoder
    >>> picture_embeddings(new_image_encoder(), np.zeros((3, 128, 128, 3), np.uint8), batch=2).shape
    torch.Size([3, 128])
    """
    chunks = [image_embeddings(image_encoder, clip_pixels(images[i:i + batch])).float()
              for i in tqdm(range(0, len(images), batch), desc="picture embeddings", leave=False)]
    return torch.cat(chunks)


def embedding_statistics(embeds: torch.Tensor) -> CLIPEmbeddingNoiseAugmentation:
    """The noise augmentation, scaling by the training embeddings' per-dimension mean and
    standard deviation (the released ViT-L model's Karlo statistics play this part).

    >>> augment = embedding_statistics(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
    >>> augment.data_mean.tolist(), augment.data_std.tolist()
    ([[1.0, 3.0]], [[1.0, 2.0]])
    """
    augment = CLIPEmbeddingNoiseAugmentation(embeds.shape[1])
    augment.data_mean.copy_(embeds.mean(0, keepdim=True))
    augment.data_std.copy_(embeds.std(0, keepdim=True, unbiased=False))
    return augment


def empty_prompt_context(text_encoder_2) -> torch.Tensor:
    """The cross-attention context of the empty prompt (1, 77, 128), read as SD 2.x reads its
    encoder: the penultimate layer through the final LayerNorm (`Conditioner(final_layer_norm=True)`).

    >>> from sdxl_edu.nano.clip import new_text_encoders
    >>> empty_prompt_context(new_text_encoders(len(nano_tokenizers()[0]))[1]).shape
    torch.Size([1, 77, 128])
    """
    conditioner = Conditioner(None, None, nano_tokenizers()[1], text_encoder_2, force_zeros_for_empty_prompt=False,
                              final_layer_norm=True)
    return conditioner.encode_text([""])[0]


def training_y(rng, augment: CLIPEmbeddingNoiseAugmentation, embeds: torch.Tensor) -> torch.Tensor:
    """Stable unCLIP's y for a training batch of picture embeddings (B, d): each noise-augmented
    at a level uniform over 0..999, then zeroed with probability `EMBEDDING_DROPOUT` (25%), the
    unconditional input that guidance compares against. Draws levels, noise, then dropout from
    `rng`, in that order.

    >>> augment = embedding_statistics(torch.randn(10, 4))
    >>> y = training_y(np.random.default_rng(0), augment, torch.randn(1000, 4))
    >>> y.shape, 0.2 < float((y == 0).all(1).float().mean()) < 0.3  # (B, 2d): embedding, level
    (torch.Size([1000, 8]), True)
    """
    batch = len(embeds)
    levels = torch.from_numpy(rng.integers(0, augment.max_noise_level, batch))
    noise = torch.from_numpy(rng.standard_normal(embeds.shape).astype(np.float32))
    keep = torch.from_numpy(rng.random(batch) >= EMBEDDING_DROPOUT).float()
    return drop_embeddings(augment(embeds, levels, noise), keep)


def stage_reimagine(run: Run, text_encoder_2, image_encoder, batch: int = 64,
                    scheduler: dict = REIMAGINE_SCHEDULER, init=None) -> None:
    """The variations UNet on the square bucket's cached latents: y from the picture's own
    noise-augmented embedding at a level uniform over 0..999, zeroed for 25% of the batch;
    the v target on `scheduler` (a probe may pass another); the empty prompt's context. The
    embedding statistics are saved beside the checkpoint (`reimagine_stats.pt`) for the export.
    With `init` (the shipped variation pipeline) the UNet starts from its weights."""
    data, latents = load_data(run)[SQUARE], load_latents(run)[SQUARE]
    embeds = picture_embeddings(image_encoder, data["images"])
    augment = embedding_statistics(embeds)
    torch.save(augment.state_dict(), run.out / "reimagine_stats.pt")
    context = empty_prompt_context(text_encoder_2)
    schedule = NoiseSchedule.from_config(scheduler)
    unet = new_unet(run, "reimagine", NANO_REIMAGINE, init)

    def loss_fn(rng):
        idx = rng.integers(0, len(embeds), batch)
        x0 = torch.from_numpy(latents["clean"][idx]).float()
        y = training_y(rng, augment, embeds[idx])
        x_t, t, eps = noisy_latents(rng, schedule, x0)
        prediction = unet(x_t, t, context.expand(batch, -1, -1), y)
        return F.mse_loss(prediction, schedule.training_target(x0, t, eps))

    fit(run, "reimagine", {"unet": unet}, loss_fn, STEPS["reimagine"], lr=3e-4)


def export_reimagine(run: Run, weights: Path, scheduler: dict = REIMAGINE_SCHEDULER) -> Path:
    """The run's nano Reimagine (the stage's EMA UNet, the run's autoencoder, second text
    encoder and image tower) as one file in Stable unCLIP's released layout
    (`load_variation_pipeline`), fp16 but for the embedding statistics; the file carries
    `scheduler`, the one the stage was trained on."""
    from ..loading import save_single_file

    augment = CLIPEmbeddingNoiseAugmentation(NANO_REIMAGINE.adm_in_channels // 2)
    augment.load_state_dict(torch.load(run.out / "reimagine_stats.pt", weights_only=True))
    vae, (_, text_encoder_2, image_encoder) = trained_vae(run), trained_clip(run)
    unet = trained(run, "reimagine", UNet(NANO_REIMAGINE))
    vae.config = dataclasses.replace(vae.config, scaling_factor=vae.scaling_factor)
    weights.mkdir(parents=True, exist_ok=True)
    path = weights / "nano_reimagine.safetensors"
    save_single_file(path, unet.half(), vae.half(), text_encoder_2.half(),
                     extra={"default_size": 128, "scheduler": scheduler},
                     image_encoder=image_encoder.half(), noise_augmentor=augment)
    return path
