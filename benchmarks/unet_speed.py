"""Forward time of our UNet against diffusers' UNet2DConditionModel, same weights and threads.

    python benchmarks/unet_speed.py            # mid-size SDXL-shaped config, CPU
    python benchmarks/unet_speed.py --full     # full SDXL base (needs a GPU or much patience)

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
from tiny import randomize, to_diffusers  # noqa: E402

from sdxl_edu.config import SDXL_BASE, UNetConfig  # noqa: E402
from sdxl_edu.loading import diffusers_unet_names  # noqa: E402
from sdxl_edu.unet import UNet  # noqa: E402

MID = UNetConfig(model_channels=128, channel_mult=(1, 2, 4), transformer_depth=(0, 2, 4), transformer_depth_middle=4,
                 context_dim=2048, adm_in_channels=2816)


def diffusers_config(c: UNetConfig) -> dict:
    widths = [c.model_channels * m for m in c.channel_mult]
    attn = [d > 0 for d in c.transformer_depth]
    return dict(block_out_channels=widths, layers_per_block=c.num_res_blocks,
                down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
                up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
                transformer_layers_per_block=[max(d, 1) for d in c.transformer_depth[:-1]] + [c.transformer_depth_middle],
                attention_head_dim=[w // c.num_head_channels for w in widths], cross_attention_dim=c.context_dim,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=c.adm_in_channels, in_channels=4, out_channels=4)


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
    parser.add_argument("--full", action="store_true", help="full-size SDXL base")
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    config = SDXL_BASE if args.full else MID
    dtype = getattr(torch, args.dtype)
    ours = randomize(UNet(config)).to(args.device, dtype)
    theirs = to_diffusers(ours, diffusers_unet_names(config), UNet2DConditionModel(**diffusers_config(config)))
    theirs = theirs.to(args.device, dtype)
    b, s = args.batch, args.size
    x = torch.randn(b, 4, s, s, device=args.device, dtype=dtype)
    context = torch.randn(b, 77, config.context_dim, device=args.device, dtype=dtype)
    pooled = torch.randn(b, config.adm_in_channels - 6 * 256, device=args.device, dtype=dtype)
    ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * b, device=args.device)
    from sdxl_edu.conditioning import vector_y
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
    print(f"UNet {'SDXL base' if args.full else 'mid-size SDXL-shaped'} ({params:.0f}M params), batch {b}, "
          f"latents {s}x{s}, {args.device} {args.dtype}, {torch.get_num_threads()} threads")
    print(f"max |ours - diffusers| = {diff:.2e}")
    print(f"ours      {ours_s * 1000:9.1f} ms")
    print(f"diffusers {theirs_s * 1000:9.1f} ms")
    print(f"ratio ours/diffusers = {ours_s / theirs_s:.3f}")


if __name__ == "__main__":
    main()
