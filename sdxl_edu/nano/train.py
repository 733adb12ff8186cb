"""Train nano SDXL: `python -m sdxl_edu.nano.train [--out runs/nano]`.

Stages (`sdxl_edu.nano.stages`), each resumable from its last checkpoint and deterministic
given the seed, in this order:

1. `data`: render the scenes, one array per aspect bucket;
2. `vae`: the KL autoencoder (f = 8), and its scaling factor (1 / std of the latents, as SDXL's);
3. `latents`: every picture encoded once, and degraded copies (the autoencoder is frozen);
4. `clip`: both text encoders and an image tower pretrained contrastively, as CLIP was, then frozen;
5. `base`: the base UNet, v-prediction on a zero-terminal-SNR schedule (`NANO_SCHEDULER`),
   t uniform over 0..999, 10% of captions dropped;
6. `refiner`: the refiner UNet on t < 200 only, on SDXL's schedule, told an aesthetic score;
7. `reimagine`: nano Reimagine, image variations from the image tower's embedding (`sdxl_edu.nano.reimagine`);
8. `classifiers`: the noise-aware classifier and the evaluator;
9. `export`: single-file checkpoints in the released layout, tokenizers, the image tower,
   classifiers, into `sdxl_edu/nano/weights/` (nano Reimagine's once its stage is done).

Every stage trains with one loop (`sdxl_edu.nano.loop.fit`): AdamW, warm-up and cosine decay,
and an exponential moving average of the weights, which is what gets exported, as for SDXL.
`--quick` runs every stage on 300 pictures a bucket for 3 steps each; tests/test_nano_train.py
runs it, and is the example for the stage functions.
`--continue-from-shipped` starts the UNets from the shipped weights (and keeps their text
encoders, image tower and autoencoder, frozen), so training can go on across sessions.
"""

import argparse
from pathlib import Path

import torch

from ..sampling.schedule import NoiseSchedule
from . import NANO_SCHEDULER, SDXL_SCHEDULE, WEIGHTS
from .loop import Run
from .reimagine import export_reimagine, stage_reimagine
from .stages import SAMPLES_PER_BUCKET, STAGES, STEPS, save_clip, shipped_image_encoder, stage_base, \
    stage_classifiers, stage_clip, stage_data, stage_export, stage_latents, stage_refiner, stage_vae, trained_clip, \
    trained_vae

QUICK_SAMPLES_PER_BUCKET, QUICK_STEPS = 300, 3
STEP_OWNERS = {"vae_pictures": "vae", "classifier": "classifiers", "evaluator": "classifiers"}  # step names -> stage


def parse_args(argv=None) -> argparse.Namespace:
    """The options, with `--steps` read into `step_counts`, a dict of stage -> steps.

    >>> parse_args(["--quick", "--steps", "base=5,evaluator=7"]).step_counts
    {'base': 5, 'evaluator': 7}
    >>> parse_args(["--steps", "unet=100"])
    Traceback (most recent call last):
    SystemExit: 2
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/nano")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--weights", default=str(WEIGHTS), help="where `export` writes the shipped files")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything: a smoke test")
    parser.add_argument("--steps", default="", help="override step counts, e.g. base=6000,evaluator=2500 (a stage "
                                                    "resumes from its checkpoint and trains on to the new count)")
    parser.add_argument("--pack", help="copy what a later session needs to go on into this folder, then stop")
    parser.add_argument("--continue-from-shipped", action="store_true",
                        help="start the UNets from the shipped weights and take their text encoders and "
                             "autoencoder as it is (a session's training does not outlive the session)")
    args = parser.parse_args(argv)
    args.step_counts = {}
    for item in filter(None, args.steps.split(",")):
        stage, count = item.split("=")
        if stage not in STEPS:
            parser.error(f"--steps: no stage {stage!r}; the stages with steps are {', '.join(STEPS)}")
        args.step_counts[stage] = int(count)
    return args


def continue_from_shipped(run: Run):
    """The shipped base, refiner and nano Reimagine, to continue from; the base's autoencoder
    and CLIP towers stand in for the `vae` and `clip` stages', frozen as they are."""
    from ..loading import load_pipeline, load_variation_pipeline
    from . import BASE_FILE, REFINER_FILE, REIMAGINE_FILE

    shipped, shipped_refiner = load_pipeline(BASE_FILE), load_pipeline(REFINER_FILE)
    if not run.done("vae"):
        torch.save({"state": {k: v.float() for k, v in shipped.vae.state_dict().items()},
                    "scaling_factor": shipped.vae.scaling_factor}, run.out / "vae.pt")
        run.mark_done("vae", scaling_factor=shipped.vae.scaling_factor, source="shipped")
    if not run.done("clip"):
        save_clip(run, shipped.text_encoder, shipped.text_encoder_2, shipped_image_encoder())
        run.mark_done("clip", source="shipped")
    return shipped, shipped_refiner, load_variation_pipeline(REIMAGINE_FILE, tokenizers=WEIGHTS)


def pack(run: Run, folder: Path) -> None:
    """Copy what a later session needs to go on from `run` into `folder` (to be committed: a
    session's machine does not outlive it): the done marks, the log, the autoencoder and CLIP
    towers, the averaged weights of every finished training stage (not their optimiser state:
    a finished stage is only read), and the whole checkpoint of an unfinished one, so that
    `fit` resumes it where it stopped. The data and latents are re-made from the seed.

    >>> import tempfile
    >>> run = Run(Path(tempfile.mkdtemp()), seed=0); run.mark_done("data"); run.mark_done("vae")
    >>> run.log(stage="vae", step=1); folder = Path(tempfile.mkdtemp()) / "packed"
    >>> _ = (run.out / "base.ckpt").write_bytes(b"base, stopped at step 250")  # not done: kept whole
    >>> pack(run, folder); sorted(p.name for p in folder.iterdir())
    ['base.ckpt', 'log.jsonl', 'vae.done']
    >>> (folder / "base.ckpt").read_bytes()
    b'base, stopped at step 250'
    """
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    remade = {"data.done", "latents.done"}  # their arrays are gigabytes: a later session re-makes them
    for path in [*run.out.glob("*.done"), run.out / "log.jsonl", run.out / "vae.pt", run.out / "clip.pt",
                 run.out / "reimagine_stats.pt"]:
        if path.name in remade:
            continue
        if path.exists():
            shutil.copy(path, folder / path.name)
    for name in ("classifier", "evaluator", "refiner", "reimagine", "base"):
        ckpt = run.out / f"{name}.ckpt"
        if not ckpt.exists():
            continue
        if run.done(STEP_OWNERS.get(name, name)):
            state = torch.load(ckpt, weights_only=False)  # our own file
            torch.save({"emas": state["emas"], "step": state["step"]}, folder / ckpt.name)
        else:  # unfinished: all of it (weights, EMA, optimiser, schedule, data order) to resume exactly
            shutil.copy(ckpt, folder / ckpt.name)


def main(argv=None) -> None:
    """The command line: the stages asked for (all by default) that are not done, in order,
    and those whose `--steps` count was raised. Each stage leaves its product in the run's
    folder, where the later ones read it.

    >>> main(["--steps", "unet=100"])
    Traceback (most recent call last):
    SystemExit: 2
    """
    args = parse_args(argv)
    if args.quick:
        STEPS.update({k: QUICK_STEPS for k in STEPS})
    STEPS.update(args.step_counts)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(Path(args.out), args.seed)
    schedule, sdxl_schedule = NoiseSchedule.from_config(NANO_SCHEDULER), NoiseSchedule.from_config(SDXL_SCHEDULE)
    if args.pack:
        return pack(run, Path(args.pack))
    reopened = {STEP_OWNERS.get(name, name) for name in args.step_counts}  # `fit` resumes them to the new count
    wanted = [stage for stage in STAGES if stage in args.stages.split(",")
              and (stage == "export" or stage in reopened or not run.done(stage))]
    if "data" in wanted:
        stage_data(run, QUICK_SAMPLES_PER_BUCKET if args.quick else SAMPLES_PER_BUCKET)
        run.mark_done("data")
    shipped, shipped_refiner, shipped_reimagine = (continue_from_shipped(run) if args.continue_from_shipped
                                                   else (None, None, None))
    for stage in wanted:
        if stage == "vae":
            run.mark_done("vae", scaling_factor=stage_vae(run).scaling_factor)
        elif stage == "latents":
            stage_latents(run)
        elif stage == "clip":
            stage_clip(run)
        elif stage == "base":
            stage_base(run, schedule, trained_clip(run)[:2], shipped)
        elif stage == "refiner":
            stage_refiner(run, sdxl_schedule, trained_clip(run)[1], shipped_refiner)
        elif stage == "reimagine":
            stage_reimagine(run, *trained_clip(run)[1:], init=shipped_reimagine)
        elif stage == "classifiers":
            stage_classifiers(run, sdxl_schedule, trained_vae(run))
        elif stage == "export":
            stage_export(run, Path(args.weights))
            if run.done("reimagine"):
                export_reimagine(run, Path(args.weights))
        if stage not in ("data", "vae"):
            run.mark_done(stage)


if __name__ == "__main__":
    main()
