"""Optimizers and learning-rate schedules from recipe settings (`distill.optimizer`, `train.optimizer`, ...).
Schedules are stepped once per iteration."""
from __future__ import annotations

import torch


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """`{name: sgd|adam|adamw, lr, momentum, weight_decay, nesterov, betas}`; keys a name does not use are ignored."""
    name = cfg["name"].lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                               weight_decay=cfg.get("weight_decay", 0.0), nesterov=cfg.get("nesterov", False))
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.999))),
                   weight_decay=cfg.get("weight_decay", 0.0))
    raise ValueError(f"unknown optimizer {cfg['name']!r}; use sgd, adam or adamw")


def build_scheduler(opt, name: str | None, total_steps: int, milestones=(0.4, 0.8), gamma: float = 0.1):
    """`cosine` to zero over `total_steps`; `multistep` x`gamma` at `milestones`, fractions of the run (DAFL:
    x0.1 at 40 % and 80 %); `none` keeps the learning rate."""
    if not name or name == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    if name == "multistep":
        steps = sorted(int(f * total_steps) for f in milestones)
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=gamma)
    raise ValueError(f"unknown scheduler {name!r}; use cosine, multistep or none")
