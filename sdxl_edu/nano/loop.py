"""The training loop every stage of nano SDXL's recipe shares: `fit`.

One loop for the autoencoder, the text encoders, both UNets and the classifiers, as SDXL's
recipe trains each of its parts with the same optimiser and schedule:

- AdamW (weight decay 0.01), gradients clipped at norm 1;
- the learning rate warms up linearly over `warmup` steps, then follows one cosine from
  `lr` down to 0.1 lr:  lr_s = lr min(1, (s + 1) / warmup) (0.1 + 0.9 (1 + cos(pi s / S)) / 2);
- an exponential moving average of the weights (`ema_update`), which is what a stage
  returns and what is exported, as SDXL's released weights are EMA weights;
- a checkpoint every few hundred steps that holds everything the next step depends on
  (weights, averages, optimiser, scheduler, step, and both random generators), so a run
  stopped and started again ends bit for bit where an uninterrupted one does.

Each stage draws its batches itself, in `loss_fn(rng)`, from a numpy generator seeded per
stage (`stage_seed`); `Run` is the output folder that holds the checkpoints and the log.
"""

import copy
import json
import math
import os
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


class Run:
    """The output folder, the log, and which stages are done.

    >>> import tempfile
    >>> run = Run(Path(tempfile.mkdtemp()) / "run", seed=0)
    >>> run.done("data"), run.mark_done("data", pictures=3), run.done("data")
    (False, None, True)
    >>> run.log(stage="base", step=50, loss=0.5); (run.out / "log.jsonl").read_text().splitlines()
    ['{"stage": "base", "step": 50, "loss": 0.5}']
    """

    def __init__(self, out: Path, seed: int):
        self.out, self.seed = Path(out), seed
        self.out.mkdir(parents=True, exist_ok=True)

    def log(self, **entry) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def done(self, stage: str) -> bool:
        return (self.out / f"{stage}.done").exists()

    def mark_done(self, stage: str, **info) -> None:
        (self.out / f"{stage}.done").write_text(json.dumps(info))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float = 0.999) -> None:
    """ema <- d * ema + (1 - d) * model, with d = min(decay, (1 + step) / (10 + step)): the
    warm-up of d lets the average forget its random start quickly.

    >>> ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    >>> _ = ema.weight.data.fill_(0.0), model.weight.data.fill_(1.0)
    >>> ema_update(ema, model, step=0); round(ema.weight.item(), 3)  # d = 1/10
    0.9
    >>> ema_update(ema, model, step=10**6); round(ema.weight.item(), 4)  # d = 0.999
    0.9001
    """
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)


def stage_seed(run: Run, name: str) -> int:
    """The seed of one stage's generators: the run's seed and a hash of the stage's name
    (crc32, not Python's `hash`, which changes from one process to the next).

    >>> import tempfile
    >>> stage_seed(Run(Path(tempfile.mkdtemp()), seed=2), "base"), stage_seed(Run(Path(tempfile.mkdtemp()), seed=2), "vae")
    (2073, 2721)
    """
    return run.seed * 1000 + zlib.crc32(name.encode()) % 1000


def warmup_cosine(steps: int, warmup: int):
    """The learning-rate factor at step s: a linear warm-up, then one cosine down to 0.1.

    >>> f = warmup_cosine(steps=100, warmup=10)
    >>> [round(f(s), 3) for s in (0, 9, 50, 100, 200)]
    [0.1, 0.982, 0.55, 0.1, 0.1]
    """
    return lambda s: min(1, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def save_checkpoint(path: Path, modules: dict, emas: dict, opt, sched, rng, step: int) -> None:
    """Everything the next step depends on, the torch generator's state included (dropout,
    `torch.randn` inside a loss). Written beside `path` and then renamed over it, so a run
    stopped while saving keeps its previous checkpoint whole."""
    partial = path.with_name(path.name + ".partial")
    torch.save({"modules": {k: m.state_dict() for k, m in modules.items()},
                "emas": {k: m.state_dict() for k, m in emas.items()}, "opt": opt.state_dict(),
                "sched": sched.state_dict(), "rng": rng.bit_generator.state, "step": step,
                "torch_rng": torch.get_rng_state()}, partial)
    os.replace(partial, path)


def restore_checkpoint(path: Path, modules: dict, emas: dict, opt, sched, rng) -> int:
    """Load what `save_checkpoint` wrote into the live objects; returns the step to go on from.

    >>> import tempfile
    >>> model, path = torch.nn.Linear(1, 1), Path(tempfile.mkdtemp()) / "toy.ckpt"
    >>> opt = torch.optim.AdamW(model.parameters()); sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1)
    >>> save_checkpoint(path, {"m": model}, {"m": model}, opt, sched, np.random.default_rng(0), step=7)
    >>> restore_checkpoint(path, {"m": model}, {"m": model}, opt, sched, np.random.default_rng(1))
    7
    """
    state = torch.load(path, weights_only=False)
    for k in modules:
        modules[k].load_state_dict(state["modules"][k])
        emas[k].load_state_dict(state["emas"][k])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    return state["step"]


def fit(run: Run, name: str, modules: dict[str, torch.nn.Module], loss_fn, steps: int, lr: float,
        warmup: int = 200, every: int = 250) -> dict[str, torch.nn.Module]:
    """AdamW with warm-up and cosine decay, EMA copies, a checkpoint every `every` steps.
    `loss_fn(rng)` draws its own batch from the numpy generator, whose state is saved too, so
    a run stopped and started again ends where an uninterrupted one does. Returns the EMA modules.

    >>> import tempfile
    >>> def train(run, stop_at=None):
    ...     torch.manual_seed(0)
    ...     model, calls = torch.nn.Linear(2, 1), []
    ...     def loss_fn(rng):
    ...         calls.append(1)
    ...         if len(calls) == stop_at:
    ...             raise KeyboardInterrupt("the session ended")
    ...         x = torch.from_numpy(rng.standard_normal((8, 2))).float()
    ...         return (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
    ...     return fit(run, "toy", {"m": model}, loss_fn, steps=20, lr=0.1, warmup=2, every=5)["m"]
    >>> tmp = Path(tempfile.mkdtemp())
    >>> at_once = train(Run(tmp / "a", 0))
    >>> try:
    ...     train(Run(tmp / "b", 0), stop_at=13)  # interrupted: the last checkpoint is step 10
    ... except KeyboardInterrupt:
    ...     pass
    >>> resumed = train(Run(tmp / "b", 0))
    >>> torch.equal(at_once.weight, resumed.weight)
    True
    """
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup))
    emas = {k: copy.deepcopy(m).requires_grad_(False) for k, m in modules.items()}
    rng, step = np.random.default_rng(stage_seed(run, name)), 0
    torch.manual_seed(stage_seed(run, name))
    ckpt = run.out / f"{name}.ckpt"
    if ckpt.exists():
        step = restore_checkpoint(ckpt, modules, emas, opt, sched, rng)
    bar = tqdm(total=steps, initial=step, desc=name)
    start, losses = time.time(), []
    while step < steps:
        for m in modules.values():
            m.train()
        loss = loss_fn(rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        for k in modules:
            ema_update(emas[k], modules[k], step)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0 or step == steps:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            run.log(stage=name, step=step, loss=float(np.mean(losses[-50:])), seconds=time.time() - start)
        if step % every == 0 or step == steps:
            save_checkpoint(ckpt, modules, emas, opt, sched, rng, step)
    bar.close()
    return {k: m.eval() for k, m in emas.items()}
