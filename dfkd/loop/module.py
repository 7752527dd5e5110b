"""DistillModule: the one teacher -> student loop that every synthesizer feeds (manual optimization).

One training step (an "iteration"):
    every `synth_every` iterations: synthesizer.synthesize() -> the KD batch source (bank / latest batch)
    during the first `synthesis_only_iterations`: nothing else (the student does not train yet)
    `kd_steps` times: one KD batch (drawn, augmented, replayed rows added) -> teacher on the rows it is asked
        about (no grad, once per distinct batch) -> student -> KD loss (+ feature transfer) -> manual_backward
        -> clip -> step
    step the student's LR schedule once, update the student's weight average.
Validation scores the student on real images it never trains on: the tuning split (`tune/acc`: best.ckpt, the
chance guard) and the reporting split (`report/acc`: recorded for the published curves, never decides anything).

Its parts live beside it: `kd_batches` (bank, replay memory, latest batch and their RNG), `feature_transfer`
(feature taps and the AT term), `ema` (weight average), `rank_state` (per-rank checkpoint state), `guards`
(divergence and chance). The teacher, white or black box, is one interface (`dfkd.teachers`); it is never saved:
`state_dict()` drops it and the recipe points at its file.
"""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
import torch.nn as nn
from torchmetrics.classification import MulticlassAccuracy

from dfkd.data import SCORED_SPLITS
from dfkd.loop.ema import student_average
from dfkd.loop.feature_transfer import build_attention
from dfkd.loop.guards import Guards
from dfkd.loop.kd_batches import KDBatchSource
from dfkd.loop.rank_state import gather_rank_states, own_rank_state, rank_bundle, restore_rank_bundle
from dfkd.losses import KD_LOSSES
from dfkd.optim import build_optimizer, build_scheduler
from dfkd.synthesizers.base import SynthContext, Synthesizer
from dfkd.teachers import QueryBudgetSpent, as_teacher


class DistillModule(pl.LightningModule):
    def __init__(self, teacher, student: nn.Module, synthesizer: Synthesizer, distill: dict, bank: dict,
                 augment: nn.Module, num_classes: int, image_shape, mean, std, seed: int, timer=None,
                 lr_settings: dict[str, str] | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # the teacher is not in checkpoints
        self.teacher = as_teacher(teacher)  # frozen by construction; a black box holds no module to register
        self.student, self.synthesizer, self.augment = student, synthesizer, augment
        self.cfg = dict(distill)
        if self.cfg["kd_loss"] not in KD_LOSSES:
            raise ValueError(f"distill.kd_loss must be one of {list(KD_LOSSES)}, got {self.cfg['kd_loss']!r}")
        self.kd_loss = KD_LOSSES[self.cfg["kd_loss"]]
        self.ema_decay = self.cfg["ema_decay"]
        self.student_ema = student_average(student, self.ema_decay) if self.ema_decay else None
        self.batches = KDBatchSource(self.cfg["batch_size"], bank, self.cfg["replay"])
        self.attention = build_attention(self.cfg["attention"])
        self.accuracy = nn.ModuleDict({split: MulticlassAccuracy(num_classes, average="micro")
                                       for split in (*SCORED_SPLITS, "tune_raw")})
        self.num_classes, self.image_shape = num_classes, tuple(image_shape)
        self.mean, self.std, self.seed = tuple(mean), tuple(std), int(seed)
        self.timer = timer  # Lightning's Timer callback: training seconds, cumulative over resumes
        self.guards = Guards(self, lr_settings)
        self.total_iterations = int(self.cfg["epochs"]) * int(self.cfg["iterations_per_epoch"])
        self.iteration = 0            # checkpointed, like the two per-rank counters
        self.images_synthesized = 0   # on this rank
        self.synth_seconds = 0.0      # on this rank
        self.totals: dict[str, float] = {}  # summed over ranks at train end
        self.last_synth = None        # the latest SynthBatch, for image-grid callbacks
        self.query_budget_spent = False
        self._pending_state = None
        self._clip_norms: dict[int, float | None] = {}  # id(optimizer) -> max gradient norm

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for k in [k for k in sd if k.startswith(prefix + "teacher.")]:
            del sd[k]
        return sd

    @property
    def queries(self) -> int | None:
        """Images this rank sent to the teacher for distillation; None for a teacher not paid per query."""
        return self.teacher.queries

    def fit_seconds(self) -> float:
        return self.timer.time_elapsed("train") if self.timer is not None else 0.0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.guards.weights_finite({"student": self.student, "synthesizer": self.synthesizer})
        world = self.trainer.world_size if self._trainer is not None else 1
        checkpoint["dfkd"] = {"iteration": self.iteration, "per_rank": gather_rank_states(rank_bundle(self), world)}
        self.guards.saved_at = self.iteration

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # runs before DDP setup and before on_fit_start: keep it, apply once the synthesizer is attached
        self._pending_state = checkpoint.get("dfkd")

    # -- setup ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = build_optimizer(self.student.parameters(), self.cfg["optimizer"])
        sched = build_scheduler(opt, self.cfg["scheduler"],
                                self.total_iterations - int(self.cfg["synthesis_only_iterations"]),
                                self.cfg["milestones"], self.cfg["gamma"])
        opts, scheds = [opt], [sched]
        self._clip_norms = {id(opt): self.cfg["grad_clip"]}
        for item in self.synthesizer.optimizers():
            opts.append(item["optimizer"])
            self._clip_norms[id(item["optimizer"])] = item.get("grad_clip")
            if item.get("scheduler") is not None:
                scheds.append(item["scheduler"])
        return opts, scheds

    def on_fit_start(self):
        self.guards.can_start()
        self.teacher.split_budget(self.trainer.world_size)  # each rank spends its share of a query budget
        self.batches.start(self.device, self.seed, self.global_rank, ask_every_row=self.queries is None)
        ctx = SynthContext(num_classes=self.num_classes, image_shape=self.image_shape, mean=self.mean,
                           std=self.std, device=self.device, seed=self.seed, rank=self.global_rank,
                           world_size=self.trainer.world_size, backward=self.manual_backward,
                           step=self._step_optimizer)
        self.synthesizer.attach(self.teacher, self.student, ctx)
        if self.attention is not None:
            self.attention.attach(self.student.model, self.teacher.module.model)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradient-norm clipping of the student (`distill.grad_clip`) and of any synthesizer optimizer that asks
        for it. Here, not before `opt.step()`: under fp16 loss scaling Lightning unscales the gradients just
        before this hook, and clipping earlier would clip the scaled ones (Lightning issue #18089)."""
        max_norm = self._clip_norms.get(id(optimizer))
        if max_norm:
            self.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")

    def _step_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Step a synthesizer's optimizer through Lightning's wrapper (precision plugins, step counting:
        checkpoints are written only when some optimizer stepped, e.g. during synthesis-only iterations)."""
        for wrapped in _as_list(self.optimizers()):
            if wrapped.optimizer is optimizer:
                wrapped.step()
                return
        raise RuntimeError("synthesizer stepped an optimizer it did not return from optimizers()")

    def on_train_start(self):
        # after sanity checks, so the restored RNG streams are not consumed
        state, self._pending_state = self._pending_state, None
        if state is not None:
            self.iteration = int(state["iteration"])
            restore_rank_bundle(self, own_rank_state(state["per_rank"], self.global_rank, self.trainer.world_size))

    def on_train_end(self):
        reduce = self.trainer.strategy.reduce
        total = lambda v: float(reduce(torch.tensor(float(v or 0), device=self.device, dtype=torch.float64),  # noqa
                                       reduce_op="sum"))
        self.totals = {"images_synthesized": total(self.images_synthesized), "queries": total(self.queries),
                       "synth_seconds": total(self.synth_seconds), "fit_seconds": self.fit_seconds()}

    def on_fit_end(self):
        self.synthesizer.detach()
        if self.attention is not None:
            self.attention.close()

    # -- training -------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        try:
            return self._iteration()
        except QueryBudgetSpent:
            # stop cleanly: the run checkpoints, scores and exports the student as it is (dfkd.runs.run)
            self.query_budget_spent = True
            self.trainer.should_stop = True
            return None
        finally:
            if self.queries is not None:
                self.log("train/queries", float(self.queries * self.trainer.world_size), on_step=True,
                         on_epoch=False)

    def _iteration(self):
        if self.iteration % self.cfg["synth_every"] == 0 or self.batches.needs_synthesis:
            self._synthesize()
        if self.iteration < self.cfg["synthesis_only_iterations"]:
            self.iteration += 1
            return None
        loss = self._distill()
        _as_list(self.lr_schedulers())[0].step()
        if self.student_ema is not None:
            self.student_ema.update_parameters(self.student)
        self.iteration += 1
        return loss

    def _synthesize(self) -> None:
        t0 = time.perf_counter()
        batch = self.synthesizer.synthesize()
        dt = time.perf_counter() - t0
        for k, v in batch.losses.items():
            self.guards.finite(f"synthesizer loss '{k}'", torch.tensor(v), "synthesizer")
        self.guards.finite("the synthesized images", batch.images, "synthesizer")
        self.synth_seconds += dt
        self.images_synthesized += batch.images.shape[0]
        self.last_synth = batch
        self.batches.add(batch)
        if batch.teacher_logits is not None:
            self.batches.remember([(batch.images, batch.teacher_logits)])
        self.log_dict({f"synth/{k}": v for k, v in batch.losses.items()}, on_step=True, on_epoch=False)
        self.log("synth/images_per_s", batch.images.shape[0] / max(dt, 1e-9), on_step=True, on_epoch=False)
        self.log("synth/images", float(self.images_synthesized), on_step=True, on_epoch=False)

    def _distill(self) -> torch.Tensor:
        """`kd_steps` student steps; returns the last KD loss (detached)."""
        opt = _as_list(self.optimizers())[0]
        self.student.train()
        asked, scored = None, []  # the images t_logits belong to; this iteration's (images, logits) for replay
        for _ in range(self.cfg["kd_steps"]):
            batch = self.batches.next(self.synthesizer, self.augment)
            if batch.asked is not asked:
                # ZSKT trains `kd_steps` times on one un-augmented pseudo-batch: the frozen teacher's logits
                # (and its feature taps, which no other forward overwrites in this loop) are computed once
                with torch.no_grad():
                    t_logits = (self.teacher.logits(batch.asked) if batch.asked.shape[0] else
                                batch.asked.new_zeros(0, self.num_classes))  # replay.fraction=1: nothing fresh
                asked = batch.asked
                scored.append((batch.asked, t_logits))
            t_target = batch.targets(t_logits)
            s_logits = self.student(batch.student_input)
            loss = self.kd_loss(s_logits, t_target, self.cfg["tau"])
            if self.attention is not None:
                at = self.attention(batch.fresh.shape[0], batch.fresh_rows)
                self.log("train/attention_loss", at.detach(), on_step=True, on_epoch=False)
                loss = loss + at
            self.guards.finite("KD loss", loss.detach(), "student")
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()  # clips in on_before_optimizer_step
        self.batches.remember(scored)
        agree = (s_logits.argmax(1) == t_target.argmax(1)).float().mean()
        self.log("train/kd_loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/agreement", agree, on_step=True, on_epoch=False)
        self.log("train/lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss.detach()

    # -- validation: the tuning split decides, the reporting split is only recorded -------------------
    @property
    def scored_student(self) -> nn.Module:
        """The student that validation scores and the run exports: the weight average when `ema_decay` is set."""
        return self.student_ema.module if self.student_ema is not None else self.student

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x, y = batch
        split = SCORED_SPLITS[dataloader_idx]  # the validation loaders come in this order (dfkd.runs.run)
        self.accuracy[split].update(self.scored_student(x), y)
        if self.student_ema is not None and split == "tune":
            self.accuracy["tune_raw"].update(self.student(x), y)

    def on_validation_epoch_end(self):
        scores = {split: m.compute() for split, m in self.accuracy.items() if m.update_called}  # syncs ranks
        for m in self.accuracy.values():
            m.reset()
        for split, acc in scores.items():  # tune/acc, report/acc, tune_raw/acc (the student without its average)
            self.log(f"{split}/acc", acc, prog_bar=split == "tune", sync_dist=False)
        if "report" in scores and self.queries is not None and self.global_rank == 0 and self.logger is not None \
                and not self.trainer.sanity_checking:
            # accuracy against the images sent to the teacher, the measure of a black-box method's cost
            self.logger.experiment.add_scalar("report/acc_by_queries", float(scores["report"]),
                                              global_step=self.queries * self.trainer.world_size)
        self.guards.learning(float(scores["tune"]))  # every rank takes the same decision


def _as_list(items) -> list:
    return items if isinstance(items, list) else [items]
