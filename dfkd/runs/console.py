"""What a run prints before its progress bar: one line saying what the run is, and no warning that dfkd's own
design makes expected (every other warning still shows)."""
from __future__ import annotations

import logging
import warnings

# (message regex, why it is expected)
EXPECTED_WARNINGS = (
    (r".*module\(s\) in eval mode.*", "the frozen teacher and the weight average are in eval mode on purpose"),
    (r".*smaller than the logging interval.*", "short epochs of synthetic steps; dfkd logs every step it needs"),
    (r"Checkpoint directory .* exists and is not empty.*", "dfkd created the run folder itself (recipe.yaml)"),
    (r".*isinstance\(treespec, LeafSpec\).*", "a deprecation inside Lightning, not in dfkd"),
    (r".*does not have many workers.*", "the training 'data' are step indices; real data is validation only"),
)


def quiet_expected_warnings() -> None:
    for pattern, _ in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # Lightning's INFO lines (accelerator summary, a logging-service advertisement); its warnings still show
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_line(cfg, teacher_params: int | None, student_params: int, device: str, run_dir) -> str:
    resumed = f", resuming from {cfg.resume if cfg.resume != True else 'last'}.ckpt" if cfg.resume else ""  # noqa: E712
    budget = "" if cfg.teacher.max_queries is None else f", at most {cfg.teacher.max_queries:,} queries"
    seen = f"{teacher_params:,} params" if teacher_params is not None else f"black box: {cfg.teacher.access}{budget}"
    return (f"dfkd: recipe {cfg.recipe} | teacher {cfg.teacher.endpoint or cfg.teacher.arch} ({seen}) -> student "
            f"{cfg.student.arch} ({student_params:,}) | synthesizer {cfg.synthesizer.name} | {device} | "
            f"run {run_dir}{resumed}")

