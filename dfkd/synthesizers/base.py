"""The synthesizer plug-in interface. A synthesizer holds only its method's math; the base class owns what
every method shares: the frozen teacher (eval, no grad, asserted), a per-rank random generator
(`seed + rank`, so GPUs synthesize different images), and the bookkeeping of loss terms.

Life cycle (driven by `dfkd.distill.DistillModule`):
    __init__(**recipe kwargs, num_classes, image_shape, mean, std)   # build generators (Lightning-owned params)
    optimizers() -> list[dict]             # {"optimizer": ..., "scheduler": ..., "grad_clip": max norm or None};
                                           # [] for pixel optimization
    attach(teacher, student, ctx)          # on_fit_start, after DDP wrap: hooks, RNG
    synthesize(step) -> SynthBatch         # [0,1] NCHW images (+ targets) and the logged loss terms
    sample(n) -> Tensor | None             # fresh images for one KD step (generators), None: use the batch/bank
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
    # steps an optimizer from optimizers(); under Lightning through its wrapper, so the step is counted and the
    # gradients are unscaled (fp16) and clipped to the optimizer's "grad_clip" first
    step: Callable[[torch.optim.Optimizer], None] = lambda opt: opt.step()


class Synthesizer(nn.Module):
    uses_bn_stats = False   # subclasses that match teacher BN statistics set True (checked at attach)

    def __init__(self, batch_size: int, num_classes: int | None = None, image_shape=None, mean=None, std=None):
        super().__init__()
        self.batch_size = int(batch_size)
        # what the data looks like, known at construction so generators can be built before attach()
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        if mean is not None:
            c = len(mean)
            self.register_buffer("data_mean", torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1), persistent=False)
            self.register_buffer("data_std", torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1), persistent=False)
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
        if not hasattr(self, "data_mean"):  # not given at construction: take it from the context
            c = len(ctx.mean)
            self.register_buffer("data_mean", torch.tensor(list(ctx.mean), dtype=torch.float32).view(1, c, 1, 1), persistent=False)
            self.register_buffer("data_std", torch.tensor(list(ctx.std), dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.data_mean, self.data_std = self.data_mean.to(ctx.device), self.data_std.to(ctx.device)
        self.rng = torch.Generator(device=ctx.device)
        self.rng.manual_seed(int(ctx.seed) * 1000 + 17 + ctx.rank)

    def synthesize(self, step: int) -> SynthBatch:
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor | None:
        """Fresh [0,1] images for one KD step, or None to train on the latest batch / the bank."""
        return None

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

    def to_unit(self, x_normalized: torch.Tensor) -> torch.Tensor:
        """Teacher-normalized images -> [0,1] image space (not clamped: BN-headed generators may overshoot,
        and the teacher sees exactly what the generator made)."""
        return x_normalized * self.data_std + self.data_mean

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng, device=self.rng.device).to(self.ctx.device)
