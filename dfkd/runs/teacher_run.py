"""Supervised training of teachers on real data (`python train.py recipe=teacher_*`). A teacher recipe names its
architecture through the `teacher` config group, like a distillation recipe, and writes `<run>/teacher.pt`, a dfkd
model file (the format of exported students), into its own run folder: never over a shipped or existing teacher.
Point a distillation recipe at it with `teacher.checkpoint=<run>/teacher.pt`."""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from dfkd.augment import build_augment
from dfkd.data import build_splits, image_shape
from dfkd.models import count_params
from dfkd.models.evaluate import evaluate
from dfkd.models.files import save_model_file
from dfkd.runs.config import to_plain
from dfkd.runs.rundir import is_rank_zero, prepare_run_dir, resume_checkpoint, run_dir_of, versions, write_json
from dfkd.runs.summary import split_roles
from dfkd.runs.trainer import build_trainer
from dfkd.teachers.build import build_model_of
from dfkd.teachers.training import TeacherModule


def train_teacher(cfg: DictConfig) -> dict | None:
    t0 = time.perf_counter()
    run_dir = run_dir_of(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    d, t, tr = cfg.data, cfg.teacher, cfg.train
    splits = build_splits(d)
    clf = build_model_of(t, d)
    g = torch.Generator().manual_seed(int(cfg.seed))
    train_loader = DataLoader(splits.train, batch_size=int(tr.batch_size), shuffle=True, drop_last=True,
                              num_workers=int(d.num_workers), generator=g)
    # the reporting split, scored after each epoch for the log only: the teacher kept is the last, no best.ckpt
    val_loader = DataLoader(splits.report, batch_size=int(d.eval_batch_size), num_workers=int(d.num_workers))
    module = TeacherModule(clf, build_augment(to_plain(cfg.augment), image_shape(d)[1:]), to_plain(tr),
                           int(tr.epochs) * len(train_loader))
    trainer = build_trainer(cfg, run_dir, [], int(tr.epochs), monitor=None, lightning_progress_bar=True)
    if is_rank_zero():  # every start-up check has passed: only now is anything written
        prepare_run_dir(cfg)
    ckpt = resume_checkpoint(cfg)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt) if ckpt else None)
    if not trainer.is_global_zero:
        return None
    acc = evaluate(clf, splits.report)
    out = save_model_file(run_dir / "teacher.pt", clf.cpu(), {
        "arch": t.arch, "arch_kwargs": to_plain(t)["arch_kwargs"] or {}, "num_classes": int(d.num_classes),
        "in_chans": int(d.channels), "recipe": to_plain(cfg), "metrics": {"report_acc": acc}})
    summary = {"recipe": cfg.recipe, "run": str(cfg.run), "arch": t.arch, "params": count_params(clf.model),
               "report_acc": acc, "splits": split_roles(cfg, splits), "epochs": int(tr.epochs),
               "wall_time_s": time.perf_counter() - t0, "output": str(out), "versions": versions()}
    write_json(run_dir / "summary.json", summary)
    print(f"\n== teacher {t.arch}: report acc {acc:.4f}, {summary['wall_time_s']:.0f} s -> {out}\n"
          f"use it with: teacher.checkpoint={out}")
    return summary
