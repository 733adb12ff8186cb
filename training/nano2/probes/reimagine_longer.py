# Is nano Reimagine short of steps? Its logged loss still fell at the end of its 6000 (0.143 at step 3350,
# 0.137 at 6000), and its variations of two-object pictures keep both objects in 18% (`reimagine_binding.py`).
# This continues the shipped UNet for 6000 more steps of the same recipe (data, loss, schedule, learning rate
# warmed up again and decayed again), with another seed so that the batches and noises are new ones, then
# exports it to RUN/weights/ for `reimagine_binding.py` to score beside the shipped one.
# Usage, from the repository root (about 45 minutes on 2 cores). RUN/ needs the data and latents stages' files
# (links to those of `reimagine_schedule.py`'s runs/nano2r/ do) and the vae and clip files of training/nano2/:
#   python -m sdxl_edu.nano.train --out RUN --stages reimagine --continue-from-shipped --seed 1 --threads 2
#   python training/nano2/probes/reimagine_longer.py RUN
#   python training/nano2/probes/reimagine_binding.py 300 150 RUN/weights/nano_reimagine.safetensors
import sys
from pathlib import Path

from sdxl_edu.nano.loop import Run
from sdxl_edu.nano.reimagine import export_reimagine

run = Run(Path(sys.argv[1]), seed=1)
print(export_reimagine(run, run.out / "weights"))
