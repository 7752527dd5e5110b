"""Export a run's student: `python -m dfkd.runs.export checkpoints/<run> [--ckpt last|best] [--onnx] [--torchscript]`.

Writes `checkpoints/<run>/student.pt`, a dfkd model file (weights with `module.` / `_orig_mod.` stripped, arch,
arch kwargs, num_classes, input size, mean/std and the resolved recipe). `dfkd.load_student(path)` rebuilds an
eval-mode module that takes [0,1] images (N,C,H,W) at the data set's native size and returns logits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

import dfkd.runs.config  # noqa: F401  (registers ${dfkd_teachers:}, which a run's recipe.yaml may hold)
from dfkd.models.files import build_classifier, clean_state_dict, load_classifier, read_checkpoint, save_model_file
from dfkd.errors import CheckpointError, DfkdError
from dfkd.runs.rundir import read_student_arch


def load_student(path: str | Path) -> torch.nn.Module:
    """The exported student at `path` (a student.pt, or a run folder holding one), in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "student.pt"
    return load_classifier(path)


def export_run(run_dir: str | Path, ckpt: str = "last", onnx: bool = False, torchscript: bool = False,
               weights: dict | None = None) -> Path:
    """Write `run_dir/student.pt` from `ckpt` (or from the student `weights` given, e.g. a run's final state)."""
    run_dir = Path(run_dir)
    recipe_file, ckpt_file = run_dir / "recipe.yaml", run_dir / f"{ckpt}.ckpt"
    if not recipe_file.is_file():
        raise DfkdError(f"{run_dir} is not a dfkd run folder (no recipe.yaml)")
    others = sorted(p.name for p in run_dir.glob("*.ckpt") if p != ckpt_file)
    if weights is None and not ckpt_file.is_file():
        raise CheckpointError(f"{ckpt_file} not found; available: {others or 'none'}")
    cfg = OmegaConf.load(recipe_file)
    t, d = cfg.teacher, cfg.data
    arch, arch_kwargs = read_student_arch(run_dir, cfg)
    student = build_classifier(arch, arch_kwargs, d.num_classes, d.channels, d.image_size,
                               t.get("input_size") or d.image_size, t.get("resize", "pad"), d.mean, d.std)
    source = "final weights of the run" if weights is not None else str(ckpt_file)
    if weights is None:
        try:
            sd = read_checkpoint(ckpt_file)["state_dict"]
        except CheckpointError as e:
            alt = f" Export another checkpoint with --ckpt {others[0].removesuffix('.ckpt')}." if others else ""
            raise CheckpointError(f"{e}.{alt}") from None
        # a run with distill.ema_decay exports the weight average, the student it scored
        average = "student_ema.module.model."  # torch.optim.swa_utils.AveragedModel keeps the copy as .module
        prefix = average if any(k.startswith(average) for k in sd) else "student.model."
        weights = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    student.model.load_state_dict(clean_state_dict(weights))
    meta = {"arch": arch, "arch_kwargs": arch_kwargs,
            "num_classes": int(d.num_classes), "in_chans": int(d.channels),
            "recipe": OmegaConf.to_container(cfg, resolve=True),
            "source": source}
    try:
        out = save_model_file(run_dir / "student.pt", student, meta)
    except OSError as e:
        raise DfkdError(f"cannot write {run_dir / 'student.pt'}: {e.strerror or e}. Make {run_dir} writable (or "
                        f"free disk space) and export again with `python -m dfkd.runs.export {run_dir}`; the run's "
                        f"checkpoints are intact.") from None
    example = torch.rand(1, int(d.channels), int(d.image_size), int(d.image_size))
    student.eval()
    if torchscript:
        torch.jit.trace(student, example).save(str(run_dir / "student.ts"))
    if onnx:
        torch.onnx.export(student, example, str(run_dir / "student.onnx"), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    return out


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dfkd.runs.export", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="checkpoints/<run>")
    ap.add_argument("--ckpt", default="last", choices=["last", "best"],
                    help="which checkpoint (best is selected on the held-out set: report last)")
    ap.add_argument("--onnx", action="store_true", help="also write student.onnx")
    ap.add_argument("--torchscript", action="store_true", help="also write student.ts (traced)")
    a = ap.parse_args(argv)
    try:
        out = export_run(a.run_dir, a.ckpt, a.onnx, a.torchscript)
    except DfkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
