"""Supervised training of teachers on real data (`python train.py recipe=teacher_*`): the shipped teachers
under checkpoints/teachers/ are the output of these recipes. The teacher file is a dfkd model file (same
format as exported students), so a distillation recipe can point at it."""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from dfkd.augment import build_augment
from dfkd.checkpoint_io import build_classifier, save_model_file
from dfkd.config import to_plain
from dfkd.distill import build_optimizer, build_scheduler
from dfkd.models import count_params


class TeacherModule(pl.LightningModule):
    def __init__(self, classifier, augment, train_cfg: dict, total_steps: int):
        super().__init__()
        self.classifier, self.augment = classifier, augment
        self.train_cfg, self.total_steps = train_cfg, total_steps

    def configure_optimizers(self):
        opt = build_optimizer(self.classifier.parameters(), self.train_cfg["optimizer"])
        sched = build_scheduler(opt, self.train_cfg.get("scheduler"), self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.classifier(self.augment(x)), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self.classifier(x).argmax(1) == y).float().mean(), prog_bar=True, sync_dist=True)


def train_teacher(cfg: DictConfig) -> dict | None:
    from dfkd.data import build_splits
    from dfkd.run import build_trainer, evaluate, is_rank_zero, prepare_run_dir, run_dir_of, versions, write_json

    t0 = time.perf_counter()
    run_dir = prepare_run_dir(cfg) if is_rank_zero() else run_dir_of(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    d, m, tr = cfg.data, cfg.model, cfg.train
    splits = build_splits(d)
    clf = build_classifier(m.arch, m.get("arch_kwargs") or {}, d.num_classes, d.channels, d.image_size,
                           m.get("input_size") or d.image_size, m.get("resize", "pad"), d.mean, d.std)
    g = torch.Generator().manual_seed(int(cfg.seed))
    train_loader = DataLoader(splits.train, batch_size=int(tr.batch_size), shuffle=True, drop_last=True,
                              num_workers=int(d.num_workers), generator=g)
    val_loader = DataLoader(splits.val, batch_size=int(d.eval_batch_size), num_workers=int(d.num_workers))
    module = TeacherModule(clf, build_augment(to_plain(cfg.augment)), to_plain(tr),
                           int(tr.epochs) * len(train_loader))
    trainer = build_trainer(cfg, run_dir, [], int(tr.epochs), lightning_progress_bar=True)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(run_dir / "last.ckpt") if cfg.resume else None)
    if not trainer.is_global_zero:
        return None
    acc = evaluate(clf, splits.val)
    out = save_model_file(cfg.output, clf.cpu(), {
        "arch": m.arch, "arch_kwargs": to_plain(m).get("arch_kwargs") or {}, "num_classes": int(d.num_classes),
        "in_chans": int(d.channels), "recipe": to_plain(cfg), "metrics": {"heldout_acc": acc}})
    summary = {"recipe": cfg.recipe, "run": str(cfg.run), "arch": m.arch, "params": count_params(clf.model),
               "heldout_acc": acc, "heldout_set": f"{d.name}: {len(splits.val)} real images never used for training",
               "train_images": len(splits.train), "epochs": int(tr.epochs), "wall_time_s": time.perf_counter() - t0,
               "output": str(out), "versions": versions()}
    write_json(run_dir / "summary.json", summary)
    print(f"\n== teacher {m.arch}: held-out acc {acc:.4f}, {summary['wall_time_s']:.0f} s -> {out}")
    return summary
