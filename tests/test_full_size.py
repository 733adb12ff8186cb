"""A full-size synthetic SDXL base file (exact released layout, random fp16) loads, and its
peak memory stays within 1.3x the model's size. About a minute and 7 GB of disk."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # writes and loads a 7 GB checkpoint

BENCH = Path(__file__).parent.parent / "benchmarks" / "load_memory.py"


def test_full_size_base_loads_within_memory_bound(tmp_path):
    if shutil.disk_usage(tmp_path).free < 8 * 2**30:
        pytest.skip(f"needs 8 GB free disk for a 7 GB checkpoint; {tmp_path} has less")
    sys.path.insert(0, str(BENCH.parent))
    from load_memory import write_synthetic

    path = tmp_path / "sd_xl_base_synthetic.safetensors"
    write_synthetic(path, "base")
    probe = ("import sys, json, torch, sdxl_edu; sys.path.insert(0, %r); from load_memory import load_and_measure; "
             "load_and_measure(%r, 'float16')" % (str(BENCH.parent), str(path)))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"full-size base: model {result['model_bytes'] / 2**30:.2f} GiB, "
          f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB, loaded in {result['seconds']:.1f} s")
    assert result["model_bytes"] > 6.4 * 2**30  # UNet + VAE + both encoders, fp16
    assert result["peak_rss_bytes"] < 1.3 * result["model_bytes"]

