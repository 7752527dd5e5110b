"""DistillModule: the one teacher -> student loop that every synthesizer feeds (manual optimization).

One training step (an "iteration"):
    every `synth_every` iterations: synthesizer.synthesize() -> images added to the sample bank
    `kd_steps` times: sample a batch from the bank (or the fresh batch) -> augment -> teacher (no grad)
        -> student -> KD loss -> manual_backward -> clip -> step
        (with `distill.replay`, part of each KD batch is replayed from a memory of earlier teacher-scored batches)
    step the student's LR schedule once.
Validation scores the student on real held-out images; they are never used for training.

State that must survive a resume and is not a parameter (the bank, counters, per-rank RNGs, synthesizer
extra state) goes through on_save_checkpoint / on_load_checkpoint as tensors and plain values; under DDP each
rank's part is gathered into the checkpoint and handed back to the same rank on resume. The teacher is
never saved: `state_dict()` drops it and the recipe points at its checkpoint.
"""
from __future__ import annotations

import copy
import time

import pytorch_lightning as pl
import torch
import torch.nn as nn

from dfkd.bank import SampleBank
from dfkd.ema import ema_update
from dfkd.hooks import FeatureTaps
from dfkd.losses import KD_LOSSES, attention_transfer
from dfkd.synthesizers.base import SynthContext, Synthesizer


class DivergenceError(FloatingPointError):
    """A loss became NaN/inf; the run stops and keeps its last good checkpoint."""


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
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
    """Stepped once per iteration. `multistep` milestones are fractions of the run (DAFL: x0.1 at 40% and 80%)."""
    if not name or name == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    if name == "multistep":
        steps = sorted(int(f * total_steps) for f in milestones)
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=gamma)
    raise ValueError(f"unknown scheduler {name!r}; use cosine, multistep or none")


def _build_replay(cfg) -> tuple[SampleBank | None, float]:
    """`distill.replay: {capacity: N, fraction: f}`: keep the last N teacher-scored images with the teacher's
    logits, and replay them as a fraction f of every KD batch. Adversarial generators (ZSKT, DFAD) move on to
    new images every step and the student forgets the old ones; replaying a memory of them counters that
    (Binici et al., "Preventing catastrophic forgetting and distribution mismatch in knowledge distillation
    via synthetic data", WACV 2022). Not part of ZSKT or DFAD themselves."""
    if not cfg:
        return None, 0.0
    fraction = float(cfg.get("fraction", 0.5))
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"distill.replay.fraction must be in (0, 1), got {fraction}")
    return SampleBank(int(cfg["capacity"]), "float32"), fraction


class DistillModule(pl.LightningModule):
    def __init__(self, teacher: nn.Module, student: nn.Module, synthesizer: Synthesizer, distill: dict,
                 bank: dict, augment: nn.Module, num_classes: int, image_shape, mean, std, seed: int,
                 total_iterations: int):
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # the teacher is not in checkpoints
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        # `distill.ema_decay`: an average of the student's weights is scored and exported (dfkd/ema.py)
        self.ema_decay = distill.get("ema_decay")
        self.student_ema = copy.deepcopy(student).eval().requires_grad_(False) if self.ema_decay else None
        self.synthesizer = synthesizer
        self.augment = augment
        self.cfg = dict(distill)
        if self.cfg["kd_loss"] not in KD_LOSSES:
            raise ValueError(f"distill.kd_loss must be one of {list(KD_LOSSES)}, got {self.cfg['kd_loss']!r}")
        self.kd_loss = KD_LOSSES[self.cfg["kd_loss"]]
        self.use_bank = bool(bank.get("enabled", True))
        self.bank = SampleBank(bank["capacity"], bank.get("dtype", "uint8"))
        self.replay, self.replay_fraction = _build_replay(distill.get("replay"))
        self.num_classes, self.image_shape = num_classes, tuple(image_shape)
        self.mean, self.std, self.seed = tuple(mean), tuple(std), int(seed)
        self.total_iterations = int(total_iterations)
        # counters (checkpointed)
        self.iteration = 0
        self.images_synthesized = 0   # on this rank
        self.synth_seconds = 0.0      # on this rank
        self.fit_seconds = 0.0        # training wall time of earlier segments of this run (before a resume)
        self._fit_t0 = None
        self.totals: dict[str, float] = {}  # summed over ranks at train end
        self.kd_rng: torch.Generator | None = None
        self.last_synth = None        # the latest SynthBatch, for image-grid callbacks
        self._fresh = None
        self._pending_state = None
        self._taps = None             # (student taps, teacher taps, pairs) for attention transfer
        self._clip_norms: dict[int, float | None] = {}  # id(optimizer) -> max gradient norm, from configure_optimizers
        self._val_correct = self._val_total = 0

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for k in [k for k in sd if k.startswith(prefix + "teacher.")]:
            del sd[k]
        return sd

    def _rank_state(self) -> dict:
        return {"bank": self.bank.state_dict(),
                "replay": self.replay.state_dict() if self.replay is not None else None,
                "kd_rng": self.kd_rng.get_state(),
                "torch_rng": torch.get_rng_state(), "synth": self.synthesizer.extra_state(),
                "images_synthesized": self.images_synthesized, "synth_seconds": self.synth_seconds,
                "fit_seconds": self._fit_elapsed(),
                # per-parameter sums: under DDP every rank must hold the same student (checked by the tests)
                "student_fingerprint": _fingerprint(self.student),
                "synth_fingerprint": _fingerprint(self.synthesizer)}

    def _fit_elapsed(self) -> float:
        return self.fit_seconds + (time.perf_counter() - self._fit_t0 if self._fit_t0 is not None else 0.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        mine = self._rank_state()
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, _to_cpu(mine))
        else:
            gathered = [_to_cpu(mine)]
        checkpoint["dfkd"] = {"iteration": self.iteration, "per_rank": gathered}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # runs before DDP setup and before on_fit_start: keep it, apply once the synthesizer is attached
        self._pending_state = checkpoint.get("dfkd")

    def _apply_pending_state(self):
        state, self._pending_state = self._pending_state, None
        if state is None:
            return
        self.iteration = int(state["iteration"])
        per_rank = state["per_rank"]
        if len(per_rank) != self.trainer.world_size:
            raise RuntimeError(f"checkpoint was written by {len(per_rank)} processes but this run has "
                               f"{self.trainer.world_size}; resume with trainer.devices={len(per_rank)}")
        mine = per_rank[self.global_rank]
        self.bank.load_state_dict(mine["bank"], device=self.device)
        if self.replay is not None and mine.get("replay") is not None:
            self.replay.load_state_dict(mine["replay"], device=self.device)
        self.kd_rng.set_state(mine["kd_rng"])
        torch.set_rng_state(mine["torch_rng"])
        self.synthesizer.load_extra_state(mine["synth"])
        self.images_synthesized = int(mine["images_synthesized"])
        self.synth_seconds = float(mine["synth_seconds"])
        self.fit_seconds = float(mine.get("fit_seconds", 0.0))

    # -- setup ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = build_optimizer(self.student.parameters(), self.cfg["optimizer"])
        sched = build_scheduler(opt, self.cfg.get("scheduler"),
                                self.total_iterations - int(self.cfg.get("warmup_iterations", 0)),
                                self.cfg.get("milestones", (0.4, 0.8)))
        opts, scheds = [opt], [sched]
        self._clip_norms = {id(opt): self.cfg.get("grad_clip")}
        for item in self.synthesizer.optimizers():
            opts.append(item["optimizer"])
            self._clip_norms[id(item["optimizer"])] = item.get("grad_clip")
            if item.get("scheduler") is not None:
                scheds.append(item["scheduler"])
        return opts, scheds

    def on_fit_start(self):
        self.teacher.eval()
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None and \
                getattr(self.synthesizer, "sets_gradients_by_hand", False):
            raise ValueError(f"synthesizer {type(self.synthesizer).__name__} sets its gradients by hand, which fp16 "
                             f"loss scaling would divide by the loss scale: use trainer.precision=bf16-mixed (no "
                             f"loss scaling) or 32-true")
        self.kd_rng = torch.Generator(device=self.device)
        self.kd_rng.manual_seed(self.seed * 1000 + 7 + self.global_rank)
        ctx = SynthContext(num_classes=self.num_classes, image_shape=self.image_shape, mean=self.mean,
                           std=self.std, device=self.device, seed=self.seed, rank=self.global_rank,
                           world_size=self.trainer.world_size, backward=self.manual_backward,
                           step=self._step_optimizer)
        self.synthesizer.attach(self.teacher, self.student, ctx)
        at = self.cfg.get("attention") or {}
        if at.get("beta", 0) > 0 and self._taps is None:
            pairs = list(zip(at["student"], at["teacher"]))
            self._taps = (FeatureTaps(self.student.model, list(at["student"])),
                          FeatureTaps(self.teacher.model, list(at["teacher"])), pairs)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradient-norm clipping of the student (`distill.grad_clip`) and of any synthesizer optimizer that asks
        for it. Here, not before `opt.step()`: under fp16 loss scaling Lightning unscales the gradients just
        before this hook, and clipping earlier would clip the scaled ones (Lightning issue #18089)."""
        max_norm = self._clip_norms.get(id(optimizer))
        if max_norm:
            self.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")

    def _step_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Step a synthesizer's optimizer through Lightning's wrapper (precision plugins, step counting:
        checkpoints are written only when some optimizer stepped, e.g. during synthesis-only warm-up)."""
        opts = self.optimizers()
        for wrapped in opts if isinstance(opts, list) else [opts]:
            if wrapped.optimizer is optimizer:
                wrapped.step()
                return
        raise RuntimeError("synthesizer stepped an optimizer it did not return from optimizers()")

    def on_train_start(self):
        self._apply_pending_state()  # after sanity checks, so the restored RNG streams are not consumed
        self._fit_t0 = time.perf_counter()

    def on_train_end(self):
        self.fit_seconds, self._fit_t0 = self._fit_elapsed(), None
        reduce = self.trainer.strategy.reduce
        t = lambda v: torch.tensor(float(v), device=self.device, dtype=torch.float64)  # noqa: E731
        self.totals = {"images_synthesized": float(reduce(t(self.images_synthesized), reduce_op="sum")),
                       "synth_seconds": float(reduce(t(self.synth_seconds), reduce_op="sum")),
                       "fit_seconds": self.fit_seconds}

    def on_fit_end(self):
        self.synthesizer.detach()
        if self._taps is not None:
            self._taps[0].close()
            self._taps[1].close()
            self._taps = None

    # -- training -------------------------------------------------------------------------------------
    def _check_finite(self, name: str, value: torch.Tensor):
        if not torch.isfinite(value).all():
            raise DivergenceError(
                f"{name} became {value.item()} at iteration {self.iteration}. The run stopped; its last good "
                f"checkpoint is kept. Lower the learning rates or loss weights and resume, or start over.")

    def _synthesize(self):
        t0 = time.perf_counter()
        batch = self.synthesizer.synthesize(self.iteration)
        dt = time.perf_counter() - t0
        for k, v in batch.losses.items():
            self._check_finite(f"synthesizer loss '{k}'", torch.tensor(v))
        n = batch.images.shape[0]
        self.synth_seconds += dt
        self.images_synthesized += n
        self.last_synth = batch
        if self.use_bank:
            self.bank.add(batch.images, batch.targets)
        self._fresh = batch
        self.log_dict({f"synth/{k}": v for k, v in batch.losses.items()}, on_step=True, on_epoch=False)
        self.log("synth/images_per_s", n / max(dt, 1e-9), on_step=True, on_epoch=False)
        self.log("synth/images", float(self.images_synthesized), on_step=True, on_epoch=False)

    def _kd_batch(self) -> torch.Tensor:
        bs = self.cfg["batch_size"]
        fresh = self.synthesizer.sample(bs)
        if fresh is not None:
            return fresh
        if self.use_bank:
            images, _ = self.bank.sample(bs, self.kd_rng)
            return images
        return self._fresh.images

    def training_step(self, batch, batch_idx):
        assert not self.teacher.training, "teacher left eval mode"
        opts = self.optimizers()
        opt = opts[0] if isinstance(opts, list) else opts
        scheds = self.lr_schedulers()
        sched = scheds[0] if isinstance(scheds, list) else scheds

        if self.iteration % self.cfg["synth_every"] == 0 or (not self.use_bank and self._fresh is None):
            self._synthesize()

        if self.iteration < self.cfg.get("warmup_iterations", 0):
            # synthesis-only warm-up (FastDFKD): the student does not train yet
            self.iteration += 1
            return None

        self.student.train()
        tau = self.cfg["tau"]
        teacher_input = None  # the batch t_logits belong to
        scored = []           # (images, teacher logits) of this iteration, for the replay memory
        n_replay = self._replay_count()
        for _ in range(self.cfg["kd_steps"]):
            x = self.augment(self._kd_batch())
            if x is not teacher_input:
                # ZSKT trains `kd_steps` times on one un-augmented pseudo-batch: the frozen teacher's logits
                # (and its attention taps, which no other forward overwrites in this loop) are computed once
                with torch.no_grad():
                    t_logits = self.teacher(x)
                teacher_input = x
                scored.append((x, t_logits))
            keep = None
            if n_replay:
                # a random part of the fresh batch, the rest replayed with the teacher logits stored for it
                keep = torch.randperm(x.shape[0], generator=self.kd_rng, device=self.kd_rng.device)
                keep = keep[: x.shape[0] - n_replay].to(x.device)
                old_x, old_logits = self.replay.sample(n_replay, self.kd_rng)
                s_logits = self.student(torch.cat([x[keep], old_x]))
                t_batch = torch.cat([t_logits[keep], old_logits])
            else:
                s_logits, t_batch = self.student(x), t_logits
            loss = self.kd_loss(s_logits, t_batch, tau)
            if self._taps is not None:
                s_taps, t_taps, pairs = self._taps
                # attention maps pair on the fresh images only: the memory keeps logits, not feature maps
                n_fresh = x.shape[0] if keep is None else keep.shape[0]
                at = sum(attention_transfer(s_taps[a][:n_fresh], t_taps[b] if keep is None else t_taps[b][keep])
                         for a, b in pairs)
                self.log("train/attention_loss", at.detach(), on_step=True, on_epoch=False)
                loss = loss + self.cfg["attention"]["beta"] * at
            self._check_finite("KD loss", loss.detach())
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()  # clips in on_before_optimizer_step
        if self.replay is not None:
            for images, logits in scored:
                self.replay.add(images, logits)
        sched.step()
        if self.student_ema is not None:
            ema_update(self.student_ema, self.student, self.ema_decay, self.iteration)
        self.iteration += 1
        agree = (s_logits.argmax(1) == t_batch.argmax(1)).float().mean()
        self.log("train/kd_loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/agreement", agree, on_step=True, on_epoch=False)
        self.log("train/lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss.detach()

    def _replay_count(self) -> int:
        """Images of each KD batch replayed from memory (none until the memory holds a first batch)."""
        if self.replay is None or len(self.replay) == 0:
            return 0
        return int(round(self.cfg["batch_size"] * self.replay_fraction))

    # -- validation on real held-out images -----------------------------------------------------------
    @property
    def scored_student(self) -> nn.Module:
        """The student that validation scores and the run exports: the weight average when `ema_decay` is set."""
        return self.student_ema if self.student_ema is not None else self.student

    def on_validation_epoch_start(self):
        self._val_correct = torch.zeros(2, device=self.device)  # scored student, raw student
        self._val_total = torch.zeros((), device=self.device)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._val_correct[0] += (self.scored_student(x).argmax(1) == y).sum()
        if self.student_ema is not None:
            self._val_correct[1] += (self.student(x).argmax(1) == y).sum()
        self._val_total += y.numel()

    def on_validation_epoch_end(self):
        correct = self.trainer.strategy.reduce(self._val_correct, reduce_op="sum")
        total = self.trainer.strategy.reduce(self._val_total, reduce_op="sum").clamp(min=1)
        self.log("val/acc", correct[0] / total, prog_bar=True, sync_dist=False)
        if self.student_ema is not None:
            self.log("val/acc_raw_student", correct[1] / total, sync_dist=False)


def _fingerprint(module: nn.Module) -> torch.Tensor:
    """Per-parameter sums: under DDP every rank must hold the same student and generators (tested)."""
    params = [p.detach().double().sum() for p in module.parameters()]
    return torch.stack(params) if params else torch.zeros(0, dtype=torch.float64)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
