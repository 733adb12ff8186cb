"""sdxl-edu: a readable Stable Diffusion XL that loads the released weights.

>>> import sdxl_edu
>>> sdxl_edu.SDXL_BASE.context_dim  # 768 (CLIP-L) + 1280 (OpenCLIP bigG)
2048
"""

from .config import SDXL_BASE, SDXL_REFINER, SDXL_VAE, UNetConfig, VAEConfig
from .loading import load_pipeline, load_variation_pipeline
from .loading.checkpoint import CheckpointError
from .pipeline import Pipeline
from .variations import ImageVariationPipeline

__all__ = ["load_pipeline", "load_variation_pipeline", "Pipeline", "ImageVariationPipeline", "CheckpointError",
           "UNetConfig", "VAEConfig", "SDXL_BASE", "SDXL_REFINER", "SDXL_VAE"]
__version__ = "0.1.0"
