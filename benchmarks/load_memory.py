"""Peak memory while loading a full-size SDXL single file, against the model's size.

    python benchmarks/load_memory.py [--kind base|refiner] [--dtype float16] [--keep PATH]

Writes a synthetic checkpoint with the released file's exact keys, shapes and dtypes
(random fp16 values, about 7 GB for the base; tests/data/manifests), then loads it with
`load_pipeline` in a fresh process and reports that process's peak resident memory
(ru_maxrss) against the size of the loaded model in the target dtype. Target: <= 1.3x.
"""

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from tiny import manifest, tokenizers  # noqa: E402

FILES = {"base": "sd_xl_base_1.0.safetensors.keys.tsv", "refiner": "sd_xl_refiner_1.0.safetensors.keys.tsv"}


def write_synthetic(path: Path, kind: str, seed: int = 0) -> int:
    """Stream a safetensors file tensor by tensor (never more than one tensor in memory)."""
    shapes = manifest(FILES[kind])
    header, offset = {}, 0
    for key, shape in shapes.items():
        dtype, size = ("I64", 8) if key.endswith("position_ids") else ("F16", 2)
        numel = 1
        for d in shape:
            numel *= d
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + numel * size]}
        offset += numel * size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for entry in header.values():
            if entry["dtype"] == "I64":
                tensor = torch.arange(entry["shape"][-1]).view(entry["shape"])
            else:
                tensor = (torch.randn(entry["shape"], generator=g) * 0.02).half()
            f.write(tensor.numpy().tobytes())
    tok, tok_2 = tokenizers()
    tok.save_pretrained(path.parent / "tokenizer")
    tok_2.save_pretrained(path.parent / "tokenizer_2")
    return offset


def load_and_measure(path: str, dtype: str) -> None:
    """Run in a fresh process: load, then print peak RSS and the model's size."""
    import sdxl_edu

    start = time.perf_counter()
    pipe = sdxl_edu.load_pipeline(path, dtype=getattr(torch, dtype))
    seconds = time.perf_counter() - start
    modules = [pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2]
    model_bytes = sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "model_bytes": model_bytes, "peak_rss_bytes": peak}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="base", choices=FILES)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--keep", help="write the checkpoint here and keep it")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return load_and_measure(args.measure, args.dtype)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sdxl_synthetic_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sd_xl_{args.kind}_synthetic.safetensors"
    if not path.exists():
        start = time.perf_counter()
        write_synthetic(path, args.kind)
        print(f"wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s")
    baseline = subprocess.run([sys.executable, "-c", "import resource, sdxl_edu, torch; "
                               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"],
                              capture_output=True, text=True, check=True)
    result = subprocess.run([sys.executable, __file__, "--measure", str(path), "--dtype", args.dtype],
                            capture_output=True, text=True, check=True)
    r = json.loads(result.stdout.strip().splitlines()[-1])
    imports = int(baseline.stdout.strip())
    print(f"SDXL {args.kind}, {args.dtype}: loaded in {r['seconds']:.1f} s")
    print(f"model size          {r['model_bytes'] / 2**30:6.2f} GiB")
    print(f"peak RSS            {r['peak_rss_bytes'] / 2**30:6.2f} GiB (of which {imports / 2**30:.2f} GiB is "
          "python + torch + transformers before loading)")
    print(f"ratio peak / model  {r['peak_rss_bytes'] / r['model_bytes']:.3f}   (target <= 1.3)")
    print(f"ratio (peak - imports) / model  {(r['peak_rss_bytes'] - imports) / r['model_bytes']:.3f}")
    if not args.keep:
        for p in sorted(folder.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        folder.rmdir()


if __name__ == "__main__":
    main()
