"""The Lightning Trainer of a run, from the `trainer` config group: checkpoint writers, TensorBoard, and
Lightning's `Timer`, which measures training time across resumes (its state is checkpointed) and, with
`trainer.max_minutes`, stops the run at that budget."""
from __future__ import annotations

import datetime
import platform
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint, Timer
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from dfkd.models.files import atomic_save
from dfkd.errors import RunError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed into place: a crash or a full disk during a write
    never leaves a truncated last.ckpt where a good one was. A write that fails stops the run, naming the path."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(checkpoint, path)
        except OSError as e:
            kept = "the previous checkpoint is intact" if path.is_file() else "no checkpoint was written"
            raise RunError(f"cannot write checkpoint {path}: {e.strerror or e}; {kept}. Free disk space or make "
                           f"{path.parent} writable, then resume with resume=true.") from None


def build_timer(max_minutes: float | None) -> Timer:
    duration = datetime.timedelta(minutes=float(max_minutes)) if max_minutes else None
    return Timer(duration=duration, interval="step", verbose=False)


def stopped_by_budget(timer: Timer) -> bool:
    remaining = timer.time_remaining("train")
    return remaining is not None and remaining <= 0


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, max_epochs: int,
                  monitor: str | None = "tune/acc", lightning_progress_bar: bool = False) -> pl.Trainer:
    tr = cfg.trainer
    strategy = tr.strategy
    several = not str(tr.devices).isdigit() or int(tr.devices) > 1  # "auto", "0,1", [0, 1] may mean several
    if strategy == "auto" and (several or int(tr.num_nodes) > 1):
        # generator and student are updated in separate backward passes, so each pass leaves some
        # parameters unused; rank-local tensors (pixels, bank) are plain attributes, never DDP state.
        strategy = "ddp_find_unused_parameters_true"
    # two writers, so last.ckpt is rewritten every epoch whether or not the monitored metric improved
    ckpts = [ModelCheckpoint(dirpath=run_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                             enable_version_counter=False)]
    if monitor:
        ckpts.append(ModelCheckpoint(dirpath=run_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                                     every_n_epochs=1, enable_version_counter=False))
    return pl.Trainer(
        accelerator=tr.accelerator, devices=tr.devices, num_nodes=tr.num_nodes, strategy=strategy,
        precision=tr.precision, deterministic=tr.deterministic, max_epochs=int(max_epochs),
        logger=TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        callbacks=[*ckpts, *callbacks], enable_progress_bar=lightning_progress_bar, num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=int(tr.log_every_n_steps), enable_model_summary=False,
        check_val_every_n_epoch=int(tr.check_val_every_n_epoch))


def best_score(trainer: pl.Trainer) -> float | None:
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_score is not None:
            return float(cb.best_model_score)
    return None


def device_of(trainer: pl.Trainer) -> str:
    root = trainer.strategy.root_device
    if root.type == "cuda":
        return f"{torch.cuda.get_device_name(root)} x{trainer.world_size}"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()}) x{trainer.world_size}"
