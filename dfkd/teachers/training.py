"""Supervised training of a teacher on real data: the LightningModule (cross-entropy on augmented images, accuracy
on the reporting split, logged). The run around it is `dfkd.runs.teacher_run.train_teacher`."""
from __future__ import annotations

import pytorch_lightning as pl
import torch.nn.functional as F

from dfkd.optim import build_optimizer, build_scheduler


class TeacherModule(pl.LightningModule):
    def __init__(self, classifier, augment, train_cfg: dict, total_steps: int):
        super().__init__()
        self.classifier, self.augment = classifier, augment
        self.train_cfg, self.total_steps = train_cfg, total_steps

    def configure_optimizers(self):
        opt = build_optimizer(self.classifier.parameters(), self.train_cfg["optimizer"])
        sched = build_scheduler(opt, self.train_cfg["scheduler"], self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.classifier(self.augment(x)), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("report/acc", (self.classifier(x).argmax(1) == y).float().mean(), prog_bar=True, sync_dist=True)
