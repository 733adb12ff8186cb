"""The command line runs and reports what the configs say."""

import subprocess
import sys

import pytest
from tiny import parts, save

pytestmark = pytest.mark.slow  # each test starts a fresh Python, which pays torch's import


def test_info_without_weights():
    out = subprocess.run([sys.executable, "-m", "sdxl_edu", "info"], capture_output=True, text=True, check=True).stdout
    assert "UNet 2,567M parameters, 86% in SpatialTransformers" in out
    assert "encoder level 0: 320 channels, 2 blocks, no attention" in out and "SDXL refiner 1.0" in out


def test_generate_from_a_checkpoint(tmp_path):
    path = save(tmp_path, parts("base"))
    out = subprocess.run([sys.executable, "-m", "sdxl_edu", "generate", str(path), "a red circle", "--steps", "2",
                          "--size", "64", "--out", str(tmp_path / "x.png")], capture_output=True, text=True, check=True)
    assert (tmp_path / "x.png").stat().st_size > 0 and "saved" in out.stdout
