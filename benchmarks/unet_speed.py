"""Forward time of our UNet against diffusers' UNet2DConditionModel, same weights and threads.

    python benchmarks/unet_speed.py            # mid-size SDXL-shaped config, CPU
    python benchmarks/unet_speed.py --full     # full SDXL base (needs a GPU or much patience)
    python benchmarks/unet_speed.py --full --model refiner --device cuda --dtype float16

Prints the median time of each and the ratio ours / diffusers (target: <= 1.0).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from diffusers import UNet2DConditionModel  # noqa: E402
from tiny import diffusers_unet_config, randomize, to_diffusers  # noqa: E402

from sdxl_edu.config import SDXL_BASE, SDXL_REFINER, UNetConfig  # noqa: E402
from sdxl_edu.loading.diffusers import diffusers_unet_names  # noqa: E402
from sdxl_edu.model.unet import UNet  # noqa: E402

MID = UNetConfig(channels=(128, 256, 512), transformer_depth=(0, 2, 4), transformer_depth_middle=4,
                 context_dim=2048, adm_in_channels=2816)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="full-size SDXL (base unless --model refiner)")
    parser.add_argument("--model", choices=["base", "refiner"], default="base")
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    config = {"base": SDXL_BASE, "refiner": SDXL_REFINER}[args.model] if args.full else MID
    dtype = getattr(torch, args.dtype)
    ours = randomize(UNet(config)).to(args.device, dtype)
    theirs = to_diffusers(ours, diffusers_unet_names(config), UNet2DConditionModel(**diffusers_unet_config(config)))
    theirs = theirs.to(args.device, dtype)
    b, s = args.batch, args.size
    x = torch.randn(b, 4, s, s, device=args.device, dtype=dtype)
    context = torch.randn(b, 77, config.context_dim, device=args.device, dtype=dtype)
    sizes = [1024.0, 1024, 0, 0] + ([1024, 1024] if config.context_dim == 2048 else [6.0])  # refiner: aesthetic
    pooled = torch.randn(b, config.adm_in_channels - len(sizes) * 256, device=args.device, dtype=dtype)
    ids = torch.tensor([sizes] * b, device=args.device)
    from sdxl_edu.model.conditioning import vector_y
    y = vector_y(pooled, ids)
    t = torch.tensor([500] * b, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run_ours():
        with torch.no_grad():
            ours(x, t, context, y)
        sync()

    def run_theirs():
        with torch.no_grad():
            theirs(x, t, encoder_hidden_states=context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids})
        sync()

    with torch.no_grad():
        diff = (ours(x, t, context, y) - theirs(x, t, encoder_hidden_states=context,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample).abs().max().item()
    ours_s, theirs_s = median_time(run_ours, args.repeats), median_time(run_theirs, args.repeats)
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"UNet {'SDXL ' + args.model if args.full else 'mid-size SDXL-shaped'} ({params:.0f}M params), batch {b}, "
          f"latents {s}x{s}, {args.device} {args.dtype}, {torch.get_num_threads()} threads")
    print(f"max |ours - diffusers| = {diff:.2e}")
    print(f"ours      {ours_s * 1000:9.1f} ms")
    print(f"diffusers {theirs_s * 1000:9.1f} ms")
    print(f"ratio ours/diffusers = {ours_s / theirs_s:.3f}")


if __name__ == "__main__":
    main()
