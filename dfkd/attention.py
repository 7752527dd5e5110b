"""Attention transfer as a loss module that owns its feature taps (Zagoruyko & Komodakis, ICLR 2017; ZSKT eq. 3):

    beta * sum over block pairs (a, b) of  mean (attention_map(S_a) - attention_map(T_b))^2

`distill.attention: {beta, student: [paths], teacher: [paths]}` pairs student and teacher modules by dotted path
(e.g. WRN stages `block1..3`); beta 0 turns it off. The taps hold each module's output from the latest forward."""
from __future__ import annotations

import torch
import torch.nn as nn

from dfkd.hooks import FeatureTaps
from dfkd.losses import attention_transfer


class AttentionTransferLoss:
    def __init__(self, beta: float, student_paths: list[str], teacher_paths: list[str]):
        if len(student_paths) != len(teacher_paths) or not student_paths:
            raise ValueError(f"distill.attention pairs student and teacher modules one to one; got "
                             f"{list(student_paths)} and {list(teacher_paths)}")
        self.beta = float(beta)
        self.pairs = list(zip(student_paths, teacher_paths))
        self._student_taps = self._teacher_taps = None

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        self._student_taps = FeatureTaps(student, [a for a, _ in self.pairs])
        self._teacher_taps = FeatureTaps(teacher, [b for _, b in self.pairs])

    def __call__(self, n_fresh: int, keep: torch.Tensor | None = None) -> torch.Tensor:
        """beta-weighted loss of the latest forwards. The student's first `n_fresh` rows pair with the teacher's
        rows `keep` (all rows when None): replayed images carry teacher logits, not feature maps."""
        total = 0.0
        for a, b in self.pairs:
            t = self._teacher_taps[b]
            total = total + attention_transfer(self._student_taps[a][:n_fresh], t if keep is None else t[keep])
        return self.beta * total

    def close(self) -> None:
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.close()
        self._student_taps = self._teacher_taps = None


def build_attention(cfg: dict) -> AttentionTransferLoss | None:
    if not cfg or cfg["beta"] <= 0:
        return None
    return AttentionTransferLoss(cfg["beta"], cfg["student"], cfg["teacher"])
