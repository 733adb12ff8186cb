"""What comes from the Hugging Face hub, or from beside a file: repositories and tokenizers.

SDXL's two tokenizers (vocab.json and merges.txt, a few MB) ship in the diffusers release,
not in the single file; `find_tokenizers` looks for them where a user is likely to have
them, and only then on the hub. Downloading needs the `hub` extra (huggingface_hub).
"""

import os
import warnings
from pathlib import Path

from transformers import CLIPTokenizer

SDXL_BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"


def load_tokenizer(folder: str) -> CLIPTokenizer:
    """A CLIP tokenizer saved in transformers' format (vocab.json, merges.txt, ...)."""
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def find_tokenizers(path: Path, tokenizers, need_first: bool):
    """Tokenizers from the argument, from beside the file, or from the hub, in that order."""
    if isinstance(tokenizers, (tuple, list)):
        tok, tok_2 = (load_tokenizer(str(t)) if isinstance(t, (str, os.PathLike)) else t for t in tokenizers)
        return tok, tok_2
    candidates = [Path(tokenizers)] if tokenizers is not None and Path(tokenizers).is_dir() else []
    candidates.append(path.parent)
    for folder in candidates:
        if (folder / "tokenizer_2").is_dir() and (not need_first or (folder / "tokenizer").is_dir()):
            return (load_tokenizer(str(folder / "tokenizer")) if need_first else None,
                    load_tokenizer(str(folder / "tokenizer_2")))
    hub_id = tokenizers if isinstance(tokenizers, str) and looks_like_hub_id(tokenizers) else SDXL_BASE_REPO
    try:
        folder = Path(download(hub_id, allow_patterns=["tokenizer/*", "tokenizer_2/*"]))
        return (load_tokenizer(str(folder / "tokenizer")) if need_first else None,
                load_tokenizer(str(folder / "tokenizer_2")))
    except Exception as e:  # no hub extra, or no network
        raise FileNotFoundError(
            f"No tokenizer files for {path}. SDXL's two tokenizers (vocab.json and merges.txt, a few MB) "
            "ship in the diffusers release, not in the single file. Either pass "
            "tokenizers='path/to/stable-diffusion-xl-base-1.0' (any folder with tokenizer/ and "
            "tokenizer_2/ sub-folders), put those two folders next to the .safetensors file, or "
            f"install the hub extra (pip install 'sdxl-edu[hub]') to download them. ({e})") from None


def looks_like_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith((".", "/")) and not os.path.exists(s)


def download(repo_id: str, allow_patterns: list[str] | None = None) -> str:
    """Download an SDXL (or Stable unCLIP) diffusers repository (safetensors, configs,
    tokenizers only; unCLIP's image tower and embedding statistics too) and return its local
    folder. Needs the `hub` extra: pip install 'sdxl-edu[hub]'."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError("downloading from the Hugging Face hub needs huggingface_hub: "
                          "pip install 'sdxl-edu[hub]'") from None
    patterns = allow_patterns or ["model_index.json", "*/config.json", "scheduler/*", "tokenizer*/*",
                                  "unet/diffusion_pytorch_model.fp16.safetensors",
                                  "vae/diffusion_pytorch_model.safetensors", "text_encoder*/model.fp16.safetensors",
                                  "image_encoder/model.fp16.safetensors", "image_normalizer/*",
                                  "image_noising_scheduler/*"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return snapshot_download(repo_id, allow_patterns=patterns)
