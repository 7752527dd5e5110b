"""A run's `curve.csv`: held-out accuracy after every epoch against training seconds, images synthesized and queries.
Written by the run (dfkd.runs.callbacks.CurveLogger) and read by the benchmark, which imports no training code."""
from __future__ import annotations

import csv
from pathlib import Path

CURVE_FIELDS = ("iteration", "fit_seconds", "images_synthesized", "heldout_acc", "when", "queries")


def append_curve(path, iteration: int, fit_seconds: float, images: int, acc: float, when: str,
                 queries: int | None = None) -> None:
    """One row of `curve.csv`: held-out accuracy against training time (cumulative over resumes), images
    synthesized and, for a black-box teacher, the images sent to it (empty otherwise)."""
    path = Path(path)
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(CURVE_FIELDS)
        w.writerow([int(iteration), f"{fit_seconds:.2f}", int(images), f"{acc:.4f}", when,
                    "" if queries is None else int(queries)])


def read_curve(path) -> list[dict]:
    with Path(path).open() as f:
        return [{"iteration": int(r["iteration"]), "fit_seconds": float(r["fit_seconds"]),
                 "images_synthesized": int(r["images_synthesized"]), "heldout_acc": float(r["heldout_acc"]),
                 "when": r["when"], "queries": int(r["queries"]) if r.get("queries") else None}
                for r in csv.DictReader(f)]
