"""The run folder `<paths.runs>/<run>/`, with a stable name so `resume=true` finds `last.ckpt`:

    recipe.yaml  last.ckpt  best.ckpt  tensorboard/  curve.csv  samples.png  summary.json  student.pt

Folder checks and writes happen on rank 0 only (Lightning re-executes the command for ranks 1..N)."""
from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

RUN_ARTIFACTS = ("last.ckpt", "best.ckpt", "recipe.yaml", "summary.json", "student.pt", "teacher.pt",
                 "samples.png", "tensorboard", "curve.csv", "student.onnx", "student.ts")


class RunError(RuntimeError):
    """The run cannot start as asked; the message says what to do instead."""


def is_rank_zero() -> bool:
    return rank_zero_only.rank == 0


def run_dir_of(cfg) -> Path:
    return Path(cfg.paths.runs) / str(cfg.run)


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Rank 0: refuse to clobber another run, check that a resume has something to resume, write recipe.yaml."""
    run_dir = run_dir_of(cfg)
    recipe_file, last = run_dir / "recipe.yaml", run_dir / "last.ckpt"
    previous = OmegaConf.load(recipe_file).get("recipe") if recipe_file.is_file() else None
    if cfg.resume:
        if not last.is_file():
            raise RunError(f"resume=true but {last} does not exist: nothing to resume. "
                           f"Drop resume=true to start run '{cfg.run}' fresh.")
        if previous and previous != cfg.recipe:
            raise RunError(f"{run_dir} holds a run of recipe '{previous}', not '{cfg.recipe}'.")
    elif previous is not None or last.is_file():
        if not cfg.overwrite:
            what = f"a run of recipe '{previous}'" if previous else "a run"
            raise RunError(f"{run_dir} already holds {what}. Pass resume=true to continue it, run=<new name> "
                           "for a separate run, or overwrite=true to replace it.")
        for name in RUN_ARTIFACTS:
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def versions() -> dict:
    """Versions of what a run's numbers depend on, recorded in every summary.json."""
    import kornia
    import pytorch_lightning as pl
    import timm
    import torch
    import torchvision

    import dfkd

    return {"dfkd": dfkd.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pytorch_lightning": pl.__version__, "timm": timm.__version__, "kornia": kornia.__version__,
            "python": platform.python_version()}
