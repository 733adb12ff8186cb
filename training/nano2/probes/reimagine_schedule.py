# Does nano Reimagine draw extra objects because of its schedule? It keeps SD 2.1 unCLIP's: v on SD's
# scaled-linear betas, sampled with "leading" spacing, whose last training step leaves signal in the noise
# (SNR 0.0047 at t = 999, sqrt(alpha_bar) 0.068) that sampling from pure noise never has. On nano's plain
# scenes that mismatch gave the base extra objects and specks, and the base moved to a zero terminal SNR
# with trailing spacing (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed";
# NANO_SCHEDULER). nano Reimagine's variations hold a median of 5 objects where the input has 2, and the
# right count for one object in 59% (`reimagine_binding.py`): the same symptom?
# This trains the `reimagine` stage exactly as `python -m sdxl_edu.nano.train` does (its data, seeds, steps,
# loss), but for the schedule, which is NANO_SCHEDULER in training and in the exported file (so sampling
# uses it too), then exports it to RUN/weights/ for `reimagine_binding.py` to score beside the shipped one.
# Usage, from the repository root (about an hour on 2 cores):
#   mkdir -p runs/nano2r && cp training/nano2/{vae,clip}.{pt,done} runs/nano2r/
#   python -m sdxl_edu.nano.train --out runs/nano2r --stages data,latents
#   python training/nano2/probes/reimagine_schedule.py runs/nano2r
#   python training/nano2/probes/reimagine_binding.py 300 150 runs/nano2r/weights/nano_reimagine.safetensors
import sys
from pathlib import Path

import torch

from sdxl_edu.nano import NANO_SCHEDULER
from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.reimagine import export_reimagine, stage_reimagine
from sdxl_edu.nano.stages import trained_clip

torch.set_num_threads(2)
run = Run(Path(sys.argv[1]), seed=0)
stage_reimagine(run, *trained_clip(run)[1:], scheduler=NANO_SCHEDULER)
print(export_reimagine(run, run.out / "weights", scheduler=NANO_SCHEDULER))
