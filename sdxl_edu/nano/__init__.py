"""nano SDXL: SDXL's architecture and training recipe in miniature, trained by this project.

Every part is built by the same classes as SDXL from a smaller config, saved in the released
single-file layout, and loaded by the same `load_pipeline`:

| part | SDXL | nano SDXL |
|---|---|---|
| text encoder 1 (context) | CLIP ViT-L, 768 wide, 12 layers | 64 wide, 4 layers, quick_gelu |
| text encoder 2 (context + pooled) | OpenCLIP bigG, 1280 wide, 32 layers | 128 wide, 4 layers, gelu |
| context / y | 2048 / 2816 | 192 / 1664 (128 pooled + 6 x 256) |
| UNet | 320-640-1280, attention depth 0-2-10 | 32-64-128, attention depth 0-1-1 |
| autoencoder | f = 8, 4 channels | f = 4, 4 channels (64 x 64 -> 16 x 16) |
| refiner | 384-768-1536-1536, depth 0-4-4-0, t < 200 | 32-64-64-64, depth 0-1-1-0, t < 200 |
| schedule | scaled linear, epsilon, leading | scaled linear rescaled to zero terminal SNR, v-prediction, trailing |

The schedule is the one deliberate departure (Lin et al. 2023): on 16 x 16 latents SDXL's
schedule leaves the layout of the training image readable at t = 999, so a model learns to
take the layout from the noise instead of from the prompt's position words. See the model
card, `sdxl_edu/nano/MODEL_CARD.md`.
"""

from ..config import UNetConfig, VAEConfig
from ..loading import NANO_DIR as WEIGHTS
BASE_FILE, REFINER_FILE = WEIGHTS / "nano_sdxl_base.safetensors", WEIGHTS / "nano_sdxl_refiner.safetensors"
CLASSIFIER_FILE, EVALUATOR_FILE = WEIGHTS / "nano_classifier.safetensors", WEIGHTS / "nano_evaluator.safetensors"

NANO_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
                  "timestep_spacing": "trailing", "steps_offset": 0, "rescale_betas_zero_snr": True}

NANO_BASE = UNetConfig(channels=(32, 64, 128), num_res_blocks=2, transformer_depth=(0, 1, 1),
                       transformer_depth_middle=1, num_head_channels=32, context_dim=192, adm_in_channels=1664)
NANO_REFINER = UNetConfig(channels=(32, 64, 64, 64), num_res_blocks=2,
                          transformer_depth=(0, 1, 1, 0), transformer_depth_middle=1, num_head_channels=32,
                          context_dim=128, adm_in_channels=1408)
NANO_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)
CLIP_L_LIKE = dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=4,
                   hidden_act="quick_gelu")
BIGG_LIKE = dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=4,
                 hidden_act="gelu", projection_dim=128)
