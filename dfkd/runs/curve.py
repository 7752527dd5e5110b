"""A run's `curve.csv`: the student's accuracy after every epoch on the tuning and the reporting split, against
training seconds, images synthesized and queries. Written by the run (dfkd.runs.callbacks.CurveLogger) and read by the
benchmark, which imports no training code: its plots and time-to-accuracy figures read `report_acc`."""
from __future__ import annotations

import csv
from pathlib import Path

CURVE_FIELDS = ("iteration", "fit_seconds", "images_synthesized", "tune_acc", "report_acc", "when", "queries")


def append_curve(path, iteration: int, fit_seconds: float, images: int, accs: dict[str, float], when: str,
                 queries: int | None = None) -> None:
    """One row of `curve.csv`: the accuracies `accs` ({"tune": .., "report": ..}) against training time (cumulative
    over resumes), images synthesized and, for a black-box teacher, the images sent to it (empty otherwise)."""
    path = Path(path)
    new = not path.is_file()
    acc = lambda split: f"{accs[split]:.4f}" if accs.get(split) is not None else ""  # noqa: E731
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(CURVE_FIELDS)
        w.writerow([int(iteration), f"{fit_seconds:.2f}", int(images), acc("tune"), acc("report"), when,
                    "" if queries is None else int(queries)])


def read_curve(path) -> list[dict]:
    number = lambda v: float(v) if v else None  # noqa: E731
    with Path(path).open() as f:
        return [{"iteration": int(r["iteration"]), "fit_seconds": float(r["fit_seconds"]),
                 "images_synthesized": int(r["images_synthesized"]), "tune_acc": number(r["tune_acc"]),
                 "report_acc": number(r["report_acc"]), "when": r["when"],
                 "queries": int(r["queries"]) if r.get("queries") else None}
                for r in csv.DictReader(f)]
