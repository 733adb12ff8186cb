"""Command line: `python -m sdxl_edu figures` (regenerate figures/ from the lessons),
`python -m sdxl_edu info [SOURCE]`, `python -m sdxl_edu generate SOURCE PROMPT`."""

import argparse
import sys

from .config import SDXL_BASE, SDXL_REFINER, SDXL_VAE
from .inspection.anatomy import describe, unet_parameters, vae_parameters


def info(source: str | None) -> None:
    """Architecture and parameter counts: of a checkpoint, or of the released SDXL configs."""
    if source:
        from .loading import load_pipeline

        pipe = load_pipeline(source)
        models = [(f"{pipe.kind} ({source})", pipe.unet_config, pipe.vae.config)]
    else:
        models = [("SDXL base 1.0", SDXL_BASE, SDXL_VAE), ("SDXL refiner 1.0", SDXL_REFINER, SDXL_VAE)]
    for name, unet, vae in models:
        counts = unet_parameters(unet)
        print(f"{name}\n{describe(unet)}")
        print(f"UNet {counts['total'] / 1e6:,.0f}M parameters, {counts['spatial transformers'] / counts['total']:.0%} "
              f"in SpatialTransformers; " + ", ".join(f"{k} {v / 1e6:,.0f}M" for k, v in counts.items()
                                                    if k.startswith(("level", "middle"))))
        print(f"VAE {vae_parameters(vae) / 1e6:,.1f}M parameters, {vae.downsampling_factor}x downsampling, "
              f"latent scale {vae.scaling_factor}\n")


def generate(args) -> None:
    from .loading import load_pipeline

    pipe = load_pipeline(args.source)
    out = pipe(args.prompt, args.negative_prompt, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
               seed=args.seed, height=args.size, width=args.size)
    out.images[0].save(args.out)
    print(f"saved {args.out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdxl_edu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("figures", help="run every lesson on nano SDXL and regenerate figures/")
    p.add_argument("--lessons", default="lessons")
    p.add_argument("--out", default="figures")
    p = sub.add_parser("info", help="architecture and parameter counts")
    p.add_argument("source", nargs="?", help="a checkpoint (default: the released SDXL configs, no weights needed)")
    p = sub.add_parser("generate", help="one image from a prompt")
    p.add_argument("source")
    p.add_argument("prompt")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--out", default="sdxl_edu.png")
    args = parser.parse_args(argv)
    if args.command == "figures":
        from .course.figures import main as figures

        figures(args.lessons, args.out)
    elif args.command == "info":
        info(args.source)
    else:
        generate(args)


if __name__ == "__main__":
    sys.exit(main())
