"""Feature-level transfer between paired student and teacher modules, as a loss module that owns its feature taps.

`kind: at`, attention transfer (Zagoruyko & Komodakis, ICLR 2017; ZSKT eq. 3):
    beta * sum over block pairs (a, b) of  mean (attention_map(S_a) - attention_map(T_b))^2
`kind: features`, hint regression on the feature maps themselves (FitNets, Romero et al., ICLR 2015, eq. 3, with
identity regressors): beta * sum over pairs of mean (S_a - T_b)^2. It needs pairs of equal shape, as a student that
is its teacher compressed layer by layer (KegNet's Tucker students) has: every output of a compressed layer is then
a target, not only the ten logits at the end.

`distill.attention: {beta, kind, student: [paths], teacher: [paths]}` pairs student and teacher modules by dotted
path (e.g. WRN stages `block1..3`); beta 0 turns it off. The taps hold each module's output from the latest forward."""
from __future__ import annotations

import torch
import torch.nn as nn

from dfkd.hooks import FeatureTaps
from dfkd.losses import attention_transfer, feature_regression

PAIR_LOSSES = {"at": attention_transfer, "features": feature_regression}


class AttentionTransferLoss:
    def __init__(self, beta: float, student_paths: list[str], teacher_paths: list[str], kind: str = "at"):
        if kind not in PAIR_LOSSES:
            raise ValueError(f"distill.attention.kind must be one of {sorted(PAIR_LOSSES)}, got {kind!r}")
        self.pair_loss = PAIR_LOSSES[kind]
        if len(student_paths) != len(teacher_paths) or not student_paths:
            raise ValueError(f"distill.attention pairs student and teacher modules one to one; got "
                             f"{list(student_paths)} and {list(teacher_paths)}")
        self.beta = float(beta)
        self.pairs = list(zip(student_paths, teacher_paths))
        self._student_taps = self._teacher_taps = None

    def attach(self, student: nn.Module, teacher: nn.Module) -> None:
        self._student_taps = FeatureTaps(student, [a for a, _ in self.pairs])
        self._teacher_taps = FeatureTaps(teacher, [b for _, b in self.pairs])

    def __call__(self, n_fresh: int, fresh_rows: torch.Tensor | None = None) -> torch.Tensor:
        """beta-weighted loss of the latest forwards. The student's first `n_fresh` rows (a KD batch's fresh rows)
        pair with the teacher's rows `fresh_rows` (all rows when None): replayed images carry teacher logits, not
        feature maps."""
        total = 0.0
        for a, b in self.pairs:
            t = self._teacher_taps[b]
            total = total + self.pair_loss(self._student_taps[a][:n_fresh], t if fresh_rows is None else t[fresh_rows])
        return self.beta * total

    def close(self) -> None:
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.close()
        self._student_taps = self._teacher_taps = None


def build_attention(cfg: dict) -> AttentionTransferLoss | None:
    if not cfg or cfg["beta"] <= 0:
        return None
    return AttentionTransferLoss(cfg["beta"], cfg["student"], cfg["teacher"], cfg.get("kind", "at"))
