"""The synthesizer plug-in interface. A synthesizer holds only its method's math; the base class owns what
every method shares: the frozen teacher (eval, no grad, asserted), a per-rank random generator
(`seed + rank`, so GPUs synthesize different images), and the bookkeeping of loss terms.

Life cycle (driven by `dfkd.distill.DistillModule`):
    __init__(**recipe kwargs)              # build generators etc. (their params are Lightning-owned)
    optimizers() -> list[dict]             # {"optimizer": ..., "scheduler": ...}; [] for pixel optimization
    attach(teacher, student, ctx)          # on_fit_start, after DDP wrap: hooks, RNG
    synthesize(step) -> SynthBatch         # [0,1] NCHW images (+ targets) and the logged loss terms
    extra_state() / load_extra_state(d)    # counters, EMA statistics, RNG: tensors and plain values only
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from dfkd.registry import Registry

SYNTHESIZERS = Registry("synthesizer")


@dataclass
class SynthBatch:
    images: torch.Tensor                   # [0,1], N x C x H x W, detached
    targets: torch.Tensor | None = None    # sampled labels, if the method conditions on them
    losses: dict[str, float] = field(default_factory=dict)


@dataclass
class SynthContext:
    num_classes: int
    image_shape: tuple[int, int, int]       # C, H, W of the native [0,1] images
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward()  # manual_backward under Lightning


class Synthesizer(nn.Module):
    uses_bn_stats = False   # subclasses that match teacher BN statistics set True (checked at attach)

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = int(batch_size)
        self._teacher = self._student = None
        self.ctx: SynthContext | None = None
        self.rng: torch.Generator | None = None

    # -- plug-in interface -------------------------------------------------------------------------
    def optimizers(self) -> list[dict]:
        return []

    def attach(self, teacher: nn.Module, student: nn.Module, ctx: SynthContext) -> None:
        # stored outside nn.Module registration: the teacher is never part of a synthesizer's state_dict
        object.__setattr__(self, "_teacher", teacher)
        object.__setattr__(self, "_student", student)
        self.ctx = ctx
        self.rng = torch.Generator(device=ctx.device)
        self.rng.manual_seed(int(ctx.seed) * 1000 + 17 + ctx.rank)

    def synthesize(self, step: int) -> SynthBatch:
        raise NotImplementedError

    def extra_state(self) -> dict:
        return {"rng": self.rng.get_state()} if self.rng is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if "rng" in state and self.rng is not None:
            self.rng.set_state(state["rng"].cpu() if self.rng.device.type == "cpu" else state["rng"])

    def detach(self) -> None:
        """Undo attach (remove hooks); called at fit end."""

    # -- helpers shared by the methods --------------------------------------------------------------
    @property
    def teacher(self) -> nn.Module:
        t = self._teacher
        assert t is not None, "synthesizer used before attach()"
        assert not t.training, "the teacher must stay in eval mode (its BN running stats are the target)"
        return t

    @property
    def student(self) -> nn.Module:
        return self._student

    def sample_targets(self, n: int, balanced: bool = True) -> torch.Tensor:
        """Labels to condition on: a shuffled, class-balanced set (or i.i.d. uniform)."""
        k = self.ctx.num_classes
        if balanced:
            t = torch.arange(n, device=self.ctx.device) % k
            return t[torch.randperm(n, generator=self.rng, device=self.rng.device).to(t.device)]
        return torch.randint(k, (n,), generator=self.rng, device=self.rng.device).to(self.ctx.device)

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng, device=self.rng.device).to(self.ctx.device)
