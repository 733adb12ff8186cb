"""From a file on disk to a working pipeline: `load_pipeline`.

Three sources, one result:

- a single `.safetensors` file in the released layout (`sd_xl_base_1.0.safetensors`,
  `sd_xl_refiner_1.0.safetensors`, nano SDXL, any SDXL-shaped file): `single_file.py`;
- a diffusers folder (`model_index.json`, one sub-folder per component): `diffusers.py`;
- a hub id (`stabilityai/stable-diffusion-xl-base-1.0`), downloaded as a diffusers folder
  with the `hub` extra: `hub.py`.

Underneath, `checkpoint.py` reads safetensors by hand (checked, memory-mapped, never a
pickle), `build.py` builds every part on the meta device, checks each key and shape
against the file and names what does not match, and `openclip.py` converts bigG's names.

The architecture is *read from the tensors' shapes* (or the folder's config.json) into the
same dataclasses the model is built from (`sdxl_edu.config`), so the released weights,
the distilled SDXL models (SSD-1B, Segmind Vega, KOALA) and small SDXL-shaped ones, nano
SDXL among them, load the same way.
"""

import os
from pathlib import Path

import torch

from ..pipeline import Pipeline
from ..variations import ImageVariationPipeline
from .checkpoint import CheckpointError
from .diffusers import load_diffusers_folder
from .hub import download, looks_like_hub_id
from .single_file import load_single_file, save_single_file

__all__ = ["load_pipeline", "load_variation_pipeline", "save_single_file", "CheckpointError", "NANO_DIR"]

NANO_DIR = Path(__file__).parent.parent / "nano" / "weights"  # the default model, shipped with the package


def load_pipeline(source: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", tokenizers=None):
    """Load SDXL (base or refiner) from a single file, a diffusers folder or a hub id; a
    Stable unCLIP file (image variations) gives an `ImageVariationPipeline`.

    >>> import tempfile
    >>> from sdxl_edu.testing import save_toy_checkpoint
    >>> pipe = load_pipeline(save_toy_checkpoint(tempfile.mkdtemp(), "refiner"))
    >>> pipe.kind, pipe.unet_config.context_dim, pipe.text_encoder  # the refiner reads bigG only
    ('refiner', 40, None)

    `source=None` loads the shipped nano SDXL base. `tokenizers` is where to find the
    tokenizer files when a single file has none beside it: a diffusers-style folder with
    `tokenizer/` and `tokenizer_2/`, a hub id, or a (tokenizer, tokenizer_2) pair.
    """
    if source is None:
        source = NANO_DIR / "nano_sdxl_base.safetensors"
        if not source.is_file():
            raise FileNotFoundError(f"the nano SDXL weights are not in this installation ({source}); "
                                    "pass the path or hub id of an SDXL checkpoint instead")
    path = Path(source)
    if path.is_dir():
        parts = load_diffusers_folder(path, dtype, device)
    elif path.is_file():
        parts = load_single_file(path, dtype, device, tokenizers)
    elif looks_like_hub_id(str(source)):
        parts = load_diffusers_folder(Path(download(str(source))), dtype, device)
    else:
        raise FileNotFoundError(f"{source} is neither a file, a folder nor a hub id ('owner/name')")
    if parts["kind"] == "unclip":
        return ImageVariationPipeline(**parts, source=str(source))
    return Pipeline(**parts, source=str(source))


def load_variation_pipeline(source: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float32,
                            device: str | torch.device = "cpu", tokenizers=None) -> ImageVariationPipeline:
    """Load a Stable unCLIP model (image variations: `sdxl_edu.variations`); a text-to-image
    checkpoint is refused with what it is. `source=None` loads the shipped nano Reimagine.

    >>> import tempfile
    >>> from sdxl_edu.testing import save_toy_checkpoint
    >>> load_variation_pipeline(save_toy_checkpoint(tempfile.mkdtemp(), "base"))
    Traceback (most recent call last):
    sdxl_edu.loading.checkpoint.CheckpointError: ... is an SDXL base checkpoint: it draws from a prompt ...
    """
    if source is None:
        source = NANO_DIR / "nano_reimagine.safetensors"
        if not source.is_file():
            raise FileNotFoundError(f"nano Reimagine's weights are not in this installation ({source}); pass the "
                                    "path of a Stable unCLIP checkpoint (SD 2.1 unCLIP's layout) instead")
    pipe = load_pipeline(source, dtype=dtype, device=device, tokenizers=tokenizers)
    if not isinstance(pipe, ImageVariationPipeline):
        raise CheckpointError(f"{source} is an SDXL {pipe.kind} checkpoint: it draws from a prompt (and refines or "
                              "edits a picture with img2img), but has no CLIP image tower to read a picture with. "
                              "Image variations need a Stable unCLIP model: load_variation_pipeline() loads nano "
                              "Reimagine; for text-to-image use load_pipeline() with this file.")
    return pipe
