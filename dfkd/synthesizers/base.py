"""The synthesizer plug-in interface. A synthesizer holds only its method's math; the base class owns what
every method shares:

- the frozen teacher (eval mode, no grad, asserted on every use) and the student, held outside the module tree
  so neither is ever part of a synthesizer's state_dict;
- a per-rank random generator (`seed` and rank), so GPUs synthesize different images; checkpointed;
- forward hooks on the teacher or student (BN statistics, feature taps): `self.hooks(...)` registers them, and
  `detach()` closes every one;
- `scoring_student()`: the student with frozen parameters while it scores synthetic images (eval mode, or the
  batch's own BN statistics with `student_mode="train"`), put back as it was afterwards;
- the BatchNorm requirement: a method that matches BN statistics sets `uses_bn_stats = True`, and
  `require_batchnorm` refuses a teacher without BN with a message naming the methods that fit.

Life cycle (driven by `dfkd.loop.module.DistillModule`):
    __init__(**recipe kwargs, num_classes, image_shape, mean, std)   # build generators (Lightning-owned params)
    optimizers() -> list[dict]             # {"optimizer", "scheduler" (or None), "grad_clip" (max norm or None)};
                                           # [] for pixel optimization
    attach(teacher, student, ctx)          # on_fit_start, after DDP wrap: hooks, RNG
    synthesize() -> SynthBatch             # [0,1] NCHW images (+ targets) and the logged loss terms
    sample(n) -> Tensor | None             # fresh images for one KD step (generators); None: the batch or the bank
    extra_state() / load_extra_state(d)    # counters, EMA statistics, RNG: tensors and plain values only
    detach()                               # at fit end: hooks removed

`objective_terms` (class attribute) declares every term of the objective (`dfkd.synthesizers.terms.Term`: the
quantity its paper moves, which way, the setting that weights it); tests/test_objectives.py checks each.
`test_settings` (class attribute) is the smallest constructor settings that still run every code path; the
contract tests (tests/test_synthesizer_contract.py) build every registered synthesizer with them.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from dfkd.errors import DfkdError
from dfkd.hooks import batchnorm_layers
from dfkd.registry import Registry
from dfkd.teachers import Teacher, as_teacher

SYNTHESIZERS = Registry("synthesizer")


@dataclass
class SynthBatch:
    images: torch.Tensor                   # [0,1] image space, N x C x H x W, detached
    targets: torch.Tensor | None = None    # sampled labels, if the method conditions on them
    losses: dict[str, float] = field(default_factory=dict)
    # the teacher's logits for `images` where synthesis already asked for them (a black box's answers, paid for in
    # queries): the loop keeps them in its replay memory (distill.replay) instead of asking again
    teacher_logits: torch.Tensor | None = None


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


class LowestLoss:
    """The iterate with the lowest loss over a synthesis loop (DeepInversion's `best_inputs`, kept by FastDFKD, CMI,
    NAYER and IDEAL too): `offer(loss, *tensors)` each step, `.values` / `.loss` at the end. The comparison stays on
    the device (`torch.where`), so the inner loop makes no host sync; ties keep the earlier iterate."""

    def __init__(self):
        self.loss: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []

    def offer(self, loss: torch.Tensor, *tensors: torch.Tensor) -> None:
        loss = loss.detach()
        if self.loss is None:
            self.loss, self.values = loss.clone(), [t.detach().clone() for t in tensors]
            return
        better = loss < self.loss
        self.loss = torch.where(better, loss, self.loss)
        self.values = [torch.where(better, t.detach(), kept) for t, kept in zip(tensors, self.values)]


class TeacherNeedsBatchNorm(DfkdError, ValueError):
    """The synthesizer matches BatchNorm statistics and the teacher has none."""


def require_batchnorm(synthesizer: "Synthesizer", teacher, name: str | None = None) -> None:
    """Refuse a teacher without BatchNorm (a black box shows none) for a method that matches BN statistics (the one
    place it is checked)."""
    module = as_teacher(teacher).module
    if not synthesizer.uses_bn_stats or (module is not None and batchnorm_layers(module)):
        return
    fits = [n for n in SYNTHESIZERS.names() if not getattr(SYNTHESIZERS.get(n), "uses_bn_stats", False)]
    raise TeacherNeedsBatchNorm(
        f"synthesizer '{name or type(synthesizer).__name__}' matches BatchNorm statistics but the teacher has no "
        f"BatchNorm layer. Use a teacher with BatchNorm (e.g. teacher=resnet8_mnist) or a synthesizer that needs "
        f"none: {', '.join(fits)}.")


class Synthesizer(nn.Module):
    uses_bn_stats = False          # True: matches teacher BN statistics; teachers without BN are refused
    sets_gradients_by_hand = False  # True: writes .grad itself (meta-gradients); fp16 loss scaling is refused
    bounded_images = True          # False: a BN-headed generator whose images may leave [0,1], as in its paper
    access = "white"               # what the method needs of the teacher: white | scores | label (dfkd/teachers/)
    test_settings: dict = {}       # tiny constructor settings for the contract tests
    w: dict[str, float] = {}       # the weight of each named loss term (`weighted_total`)
    objective_terms: dict = {}     # name -> Term: what each weighted term moves and which way (terms.py)
    direction_settings: dict = {}  # on top of test_settings where a term needs more steps to show its direction

    def __init__(self, batch_size: int, num_classes: int | None = None, image_shape=None, mean=None, std=None):
        super().__init__()
        self.batch_size = int(batch_size)
        # what the data looks like, known at construction so generators can be built before attach()
        self.num_classes = num_classes
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        if mean is not None:
            self._set_data_stats(mean, std)
        self._teacher = self._student = None
        self._hooks: list = []
        self.ctx: SynthContext | None = None
        self.rng: torch.Generator | None = None

    def _set_data_stats(self, mean, std) -> None:
        c = len(mean)
        self.register_buffer("data_mean", torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("data_std", torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1), persistent=False)

    # -- plug-in interface -------------------------------------------------------------------------
    def optimizers(self) -> list[dict]:
        return []

    def attach(self, teacher, student: nn.Module, ctx: SynthContext) -> None:
        """Subclasses that register hooks call `super().attach(...)` first, then `self.hooks(...)` on `self.teacher`
        (a network given here is held as a frozen `WhiteBoxTeacher`)."""
        teacher = as_teacher(teacher)
        require_batchnorm(self, teacher)
        # stored outside nn.Module registration: the teacher is never part of a synthesizer's state_dict
        object.__setattr__(self, "_teacher", teacher)
        object.__setattr__(self, "_student", student)
        self.ctx = ctx
        if not hasattr(self, "data_mean"):  # not given at construction: take it from the context
            self._set_data_stats(ctx.mean, ctx.std)
        self.data_mean, self.data_std = self.data_mean.to(ctx.device), self.data_std.to(ctx.device)
        self.rng = torch.Generator(device=ctx.device)
        self.rng.manual_seed(int(ctx.seed) * 1000 + 17 + ctx.rank)

    def check_teacher(self, teacher: nn.Module) -> None:
        """Before anything runs: refuse a teacher this method cannot use, naming what would fit (layer names a
        recipe gives, say). The BatchNorm requirement is checked by the base class already."""

    def synthesize(self) -> SynthBatch:
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
        """Undo attach: every hook registered through `hooks()` is removed."""
        for h in self._hooks:
            h.close()
        self._hooks = []

    # -- helpers shared by the methods --------------------------------------------------------------
    def weighted_total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The method's objective from its named terms: sum of `self.w[name] * term` over the weighted terms, in
        the order the terms come (other entries, e.g. logits kept for logging, are not summed)."""
        return sum(self.w[k] * v for k, v in terms.items() if k in self.w)

    def hooks(self, hooks):
        """Own `hooks` (anything with `close()`: BNStatHooks, FeatureTaps): `detach()` closes them."""
        self._hooks.append(hooks)
        return hooks

    @property
    def teacher(self) -> Teacher:
        t = self._teacher
        assert t is not None, "synthesizer used before attach()"
        assert not t.training, "the teacher must stay in eval mode (its BN running stats are the target)"
        return t

    def teacher_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """All a black-box method may see of the teacher: class probabilities, without gradient (a white-box
        teacher's softmax, or a black box's answers: one query per image)."""
        return self.teacher.probabilities(x)

    @property
    def student(self) -> nn.Module:
        return self._student

    # how the student scores synthetic images for a synthesis loss: "eval" (running BN statistics) or "train"
    # (the statistics of the synthetic batch itself, as the student sees it in its own KD step; DFAD's code)
    student_mode: str = "eval"
    STUDENT_MODES = ("eval", "train")

    def set_student_mode(self, mode: str) -> None:
        if mode not in self.STUDENT_MODES:
            raise DfkdError(f"synthesizer.student_mode={mode!r}: use one of {', '.join(self.STUDENT_MODES)} (eval: "
                            "the student's running BN statistics; train: the synthetic batch's own statistics)")
        self.student_mode = mode

    @contextlib.contextmanager
    def scoring_student(self):
        """The student with frozen parameters while it scores synthetic images for a synthesis loss, in
        `student_mode`; synthesis never moves the student's weights or its BN running statistics (in train mode
        the BN layers normalize with the batch's statistics at momentum 0, so the running ones stay); restored
        afterwards."""
        student = self.student
        was_training = student.training
        flags = [p.requires_grad for p in student.parameters()]
        student.train(self.student_mode == "train")
        bns = [m for _, m in batchnorm_layers(student)] if self.student_mode == "train" else []
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = 0.0
        for p in student.parameters():
            p.requires_grad_(False)
        try:
            yield student
        finally:
            for p, f in zip(student.parameters(), flags):
                p.requires_grad_(f)
            for bn, m in zip(bns, momenta):
                bn.momentum = m
            student.train(was_training)

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

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        """A generator's output in [0,1] image space: as it is from a bounded (Sigmoid) head, else `to_unit`."""
        return x if self.bounded_images else self.to_unit(x)

    def average_gradients(self, params) -> None:
        """Average the .grad of `params` over DDP ranks: for parameters a method steps from gradients it computed
        itself (torch.autograd.grad), which DDP's backward hooks never see."""
        if self.ctx.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.ctx.world_size

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng, device=self.rng.device).to(self.ctx.device)
