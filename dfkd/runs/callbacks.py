"""Callbacks: a whole-run progress bar with ETA, the first synthesized batch's cost, synthetic-image grids for
TensorBoard, the accuracy-vs-time log (`curve.csv`, written by dfkd.runs.curve), and a hard-kill hook used by the
resume test (a real SIGKILL at a chosen iteration, nothing graceful). The wall-clock budget is Lightning's own
`Timer` (dfkd/runs/trainer.py)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from tqdm.auto import tqdm

from dfkd.runs.curve import append_curve


class RunProgressBar(pl.Callback):
    """One bar over the whole run (all epochs), rank 0 only: iterations, ETA, KD loss, val acc, images."""

    def __init__(self):
        self.bar = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        # here, not at train start: a resumed run's iteration is restored by the module's own on_train_start
        if self.bar is not None or not trainer.is_global_zero:
            return
        total = trainer.num_training_batches * trainer.max_epochs
        self.bar = tqdm(total=total, initial=min(module.iteration, total), desc="distill", unit="it",
                        dynamic_ncols=True, smoothing=0.05,
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)  # a log file gets a line every 30 s

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.bar is None:
            return
        m = trainer.callback_metrics
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        post = {"kd": f"{float(loss):.3f}" if loss is not None else "-",
                "imgs": module.images_synthesized * trainer.world_size}
        if module.queries is not None:
            post["queries"] = module.queries * trainer.world_size
        if "tune/acc" in m:
            post["tune_acc"] = f"{float(m['tune/acc']):.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def on_train_end(self, trainer, module):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_exception = lambda self, trainer, module, exc: self.on_train_end(trainer, module)  # noqa: E731


class SynthesisCostNote(pl.Callback):
    """Run time scales with the teacher: after a fresh run's first synthesized batch, say what it cost and what the
    run's batches will (rank 0)."""

    def __init__(self):
        self.fresh = None  # decided at the first step, once a resume has restored the counters

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.fresh is None:
            self.fresh = module.images_synthesized == 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if not self.fresh or not trainer.is_global_zero or module.last_synth is None:
            return
        self.fresh = False
        n, seconds = module.last_synth.images.shape[0], module.synth_seconds
        batches = -(-module.total_iterations // int(module.cfg["synth_every"]))
        tqdm.write(f"dfkd: one synthesized batch of {n} images took {seconds:.2f} s (the first, with warm-up); this "
                   f"run synthesizes {batches} batches, about {batches * seconds / 60:.1f} min")


class ImageGridLogger(pl.Callback):
    """Every `every` iterations, log a grid of the latest synthesized images (rank 0 only; a small grid,
    not every step: TensorBoard image summaries are costly)."""

    def __init__(self, every: int = 50, max_images: int = 64):
        self.every, self.max_images = max(1, int(every)), int(max_images)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or module.last_synth is None or (module.iteration - 1) % self.every:
            return
        logger = trainer.logger
        if logger is None or not hasattr(logger.experiment, "add_image"):
            return
        import torchvision

        imgs = module.last_synth.images[: self.max_images].detach().float().cpu()
        grid = torchvision.utils.make_grid(imgs, nrow=int(len(imgs) ** 0.5) or 1, padding=1)
        logger.experiment.add_image("synth/images", grid, global_step=module.iteration)


class CurveLogger(pl.Callback):
    """After each validation (rank 0): append the tuning and reporting accuracies with the run's training seconds
    so far. The benchmark plots reporting accuracy against time from this file, the run's own log."""

    def __init__(self, path):
        self.path = Path(path)

    def on_validation_end(self, trainer, module):
        m = trainer.callback_metrics
        if trainer.sanity_checking or not trainer.is_global_zero or "tune/acc" not in m:
            return
        accs = {split: float(m[f"{split}/acc"]) for split in ("tune", "report") if f"{split}/acc" in m}
        append_curve(self.path, module.iteration, module.fit_seconds(), module.images_synthesized * trainer.world_size,
                     accs, "epoch", module.queries * trainer.world_size if module.queries is not None else None)


class KillAt(pl.Callback):
    """Hard-kill this process (SIGKILL) when the module reaches `iteration`: simulates a crash/pre-emption."""

    def __init__(self, iteration: int):
        self.iteration = int(iteration)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if module.iteration == self.iteration:
            trainer.strategy.barrier()
            os.kill(os.getpid(), signal.SIGKILL)


def save_image_grid(images: torch.Tensor, path, nrow: int = 16) -> None:
    import torchvision

    torchvision.utils.save_image(images[: nrow * nrow].float().cpu(), str(path), nrow=nrow, padding=1)
