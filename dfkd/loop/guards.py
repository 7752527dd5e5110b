"""The loop's stopping rules and their messages: a run whose loss, images or weights become NaN/inf stops at once
without writing the diverged state over a good checkpoint; a student still at chance well into its run is not
learning (a learning rate far too high, most often) and stops before it is exported; settings the loop cannot
honour are refused before anything runs."""
from __future__ import annotations

import torch

from dfkd.errors import STILL_AT_CHANCE, DivergenceError


def at_chance(acc: float, num_classes: int) -> bool:
    """No better than guessing: at most 1.5 times the chance accuracy."""
    return acc <= 1.5 / int(num_classes)


class Guards:
    """The divergence and chance guards of one DistillModule. `lr_settings` names the settings a message points
    at: {"student": "distill.optimizer.lr=...", "synthesizer": "synthesizer.lr=..."}."""

    def __init__(self, module, lr_settings: dict[str, str] | None = None):
        self.module = module
        self.lr_settings = lr_settings or {"student": "the student's learning rate",
                                           "synthesizer": "the synthesizer's learning rate"}
        self.saved_at: int | None = None  # iteration of the last checkpoint written in this process

    def can_start(self) -> None:
        """Settings the loop cannot honour, refused at fit start (after the precision plugin is known)."""
        m = self.module
        if m.attention is not None and m.teacher.module is None:
            raise ValueError("distill.attention needs the teacher's feature maps, which a black-box teacher "
                             "does not show: set distill.attention.beta=0 or teacher.access=white")
        if getattr(m.trainer.precision_plugin, "scaler", None) is not None and m.synthesizer.sets_gradients_by_hand:
            raise ValueError(f"synthesizer {type(m.synthesizer).__name__} sets its gradients by hand, which fp16 "
                             f"loss scaling would divide by the loss scale: use trainer.precision=bf16-mixed (no "
                             f"loss scaling) or 32-true")

    def finite(self, name: str, value: torch.Tensor, part: str) -> None:
        if not torch.isfinite(value).all():
            self.diverged(name, f"{value.item()}" if value.numel() == 1 else "non-finite", part)

    def weights_finite(self, parts: dict) -> None:
        """Before a checkpoint is written (a huge step can leave weights inf before any loss is)."""
        for part, module in parts.items():
            params = [p.detach().abs().max() for p in module.parameters() if p.numel()]
            if params and not torch.isfinite(torch.stack(params)).all():
                self.diverged(f"the {part}'s weights", "non-finite", part)

    def diverged(self, name: str, what: str, part: str):
        """Stop with a message naming the term, the learning rate involved and the last good checkpoint."""
        m = self.module
        trainer = m._trainer
        run_dir = getattr(trainer.checkpoint_callback, "dirpath", None) if trainer is not None else None
        if self.saved_at is not None and run_dir:
            kept = (f"{run_dir}/last.ckpt (iteration {self.saved_at}) is the last good checkpoint: resume from it "
                    f"with resume=true after lowering it, or start over")
        elif trainer is not None and trainer.ckpt_path:  # resumed, nothing written since
            kept = f"{trainer.ckpt_path} is untouched: resume from it after lowering it"
        else:
            kept = "no checkpoint had been written yet: start over (overwrite=true) after lowering it"
        raise DivergenceError(f"{name} became {what} at iteration {m.iteration}: the {part} diverged. Lower "
                              f"{self.lr_settings[part]} (or its loss weights); {kept}.")

    def learning(self, acc: float) -> None:
        """A student still at chance this far into the run is not learning: a learning rate far too high (often
        the synthesizer's, whose images stay finite but carry nothing) or a broken teacher. Stop, don't export it."""
        m, cfg = self.module, self.module.cfg
        after = cfg["stop_at_chance_after"]
        trained = m.iteration - int(cfg["synthesis_only_iterations"])
        planned = m.total_iterations - int(cfg["synthesis_only_iterations"])
        steps = trained * int(cfg["kd_steps"])
        if after is None or m.trainer.sanity_checking or trained < after * planned or steps < 100:
            return  # too early to judge: a fraction of the run, and at least 100 student steps
        if at_chance(acc, m.num_classes):
            raise DivergenceError(
                f"{STILL_AT_CHANCE} ({100 * acc:.1f} % on the tuning split) after {trained} of "
                f"{planned} iterations: the run is not learning. Most often a learning rate is far too high: "
                f"{self.lr_settings['synthesizer']}, or {self.lr_settings['student']}; also check that the teacher "
                f"scores well (printed at the start). Set distill.stop_at_chance_after=null to run on regardless.")
