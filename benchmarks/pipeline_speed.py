"""Time per sampling step: our pipeline against diffusers' StableDiffusionXLPipeline on the
same components and threads, and the cost of attention capture.

    python benchmarks/pipeline_speed.py

Per-step time is (time of an N-step run - time of a 2-step run) / (N - 2), so text encoding
and decoding cancel out. Prints ratios (target: ours / diffusers <= 1.0; capture <= 2x).
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402
from tiny import bigg, clip_l, diffusers_unet_config, parts, randomize, save, to_diffusers, tokenizers  # noqa: E402
from unet_speed import MID  # noqa: E402

from sdxl_edu import load_pipeline  # noqa: E402
from sdxl_edu.config import VAEConfig  # noqa: E402
from sdxl_edu.loading.diffusers import diffusers_unet_names, diffusers_vae_names  # noqa: E402
from sdxl_edu.model.unet import UNet  # noqa: E402
from sdxl_edu.model.vae import AutoencoderKL as OurVAE  # noqa: E402

VAE = VAEConfig(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=1)


def per_step(run, n: int = 6, repeats: int = 3) -> float:
    def timed(steps):
        start = time.perf_counter()
        run(steps)
        return time.perf_counter() - start
    run(2)  # warm-up
    return statistics.median((timed(n) - timed(2)) / (n - 2) for _ in range(repeats))


def main():
    folder = Path(tempfile.mkdtemp())
    tok, tok_2 = tokenizers()
    p = dict(unet=randomize(UNet(MID)), vae=randomize(OurVAE(VAE)),
             text_encoder=clip_l(len(tok), hidden=768), text_encoder_2=bigg(len(tok), hidden=1280, projection=1280),
             tokenizer=tok, tokenizer_2=tok_2)
    ours = load_pipeline(save(folder, p))
    vae_config = dict(block_out_channels=[32, 64, 128, 128], layers_per_block=1, latent_channels=4,
                      down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    theirs = StableDiffusionXLPipeline(
        unet=to_diffusers(p["unet"], diffusers_unet_names(MID), UNet2DConditionModel(**diffusers_unet_config(MID))),
        vae=to_diffusers(p["vae"], diffusers_vae_names(VAE), AutoencoderKL(**vae_config)),
        text_encoder=p["text_encoder"], text_encoder_2=p["text_encoder_2"], tokenizer=tok, tokenizer_2=tok_2,
        scheduler=EulerDiscreteScheduler.from_config(json.loads(
            (Path(__file__).parent.parent / "tests" / "data" / "scheduler_config.json").read_text())),
        add_watermarker=False)
    theirs.set_progress_bar_config(disable=True)
    size = dict(height=256, width=256)
    ours_s = per_step(lambda n: ours("a red circle", num_inference_steps=n, seed=0, output_type="latent",
                                     progress=False, **size))
    theirs_s = per_step(lambda n: theirs("a red circle", num_inference_steps=n,
                                         generator=torch.Generator().manual_seed(0), output_type="latent", **size))
    print(f"SDXL-shaped pipeline, UNet {sum(q.numel() for q in p['unet'].parameters()) / 1e6:.0f}M params, "
          f"32x32 latents, CFG, {torch.get_num_threads()} threads")
    print(f"per step: ours {ours_s * 1000:.0f} ms, diffusers {theirs_s * 1000:.0f} ms, "
          f"ratio ours/diffusers = {ours_s / theirs_s:.3f}")

    small = load_pipeline(save(folder / "small", parts("base")))
    plain = per_step(lambda n: small("a red circle", num_inference_steps=n, seed=0, output_type="latent",
                                     progress=False, height=64, width=64), n=10)

    def captured(n):
        with small.capture_attention(per_step=True):
            small("a red circle", num_inference_steps=n, seed=0, output_type="latent", progress=False,
                  height=64, width=64)
    with_capture = per_step(captured, n=10)
    print(f"small model, 16x16 latents: plain step {plain * 1000:.1f} ms, with attention capture "
          f"{with_capture * 1000:.1f} ms, ratio = {with_capture / plain:.2f}")


if __name__ == "__main__":
    main()
