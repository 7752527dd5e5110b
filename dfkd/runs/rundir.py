"""The run folder `<paths.runs>/<run>/`, with a stable name so `resume=true` finds `last.ckpt`:

    recipe.yaml  student_arch.yaml  last.ckpt  best.ckpt  tensorboard/  curve.csv  samples.png  summary.json
    student.pt

Folder checks and writes happen on rank 0 only (Lightning re-executes the command for ranks 1..N)."""
from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dfkd.models.files import atomic_write
from dfkd.runs.config import to_plain
from dfkd.errors import RunError

RUN_ARTIFACTS = ("last.ckpt", "best.ckpt", "recipe.yaml", "student_arch.yaml", "summary.json", "student.pt",
                 "teacher.pt",
                 "samples.png", "tensorboard", "curve.csv", "student.onnx", "student.ts")


def is_rank_zero() -> bool:
    from lightning_fabric.utilities.rank_zero import rank_zero_only  # here: reading a run folder needs no Lightning

    return rank_zero_only.rank == 0


def run_dir_of(cfg) -> Path:
    return Path(cfg.paths.runs) / str(cfg.run)


# settings a resume may change: where and how long it runs (time, query budget, the service's address), what it logs
RESUME_MAY_CHANGE = ("resume", "overwrite", "paths.", "plugins", "trainer.max_minutes", "trainer.log_every_n_steps",
                     "log.", "debug.", "teacher.max_queries", "teacher.endpoint", "teacher.timeout_s",
                     "teacher.retries")


def resume_checkpoint(cfg) -> Path | None:
    """The checkpoint a resume continues from (`resume=true`: last.ckpt, `resume=best`: best.ckpt), or None."""
    if not cfg.resume:
        return None
    return run_dir_of(cfg) / ("best.ckpt" if cfg.resume == "best" else "last.ckpt")


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Rank 0, once every start-up check has passed: for a resume, check the checkpoint and the settings and write
    nothing; for a fresh run, refuse to replace another run (one with a checkpoint) and write recipe.yaml."""
    run_dir = run_dir_of(cfg)
    if cfg.resume:
        check_resume(cfg, run_dir)
        return run_dir
    has_run = any(run_dir.glob("*.ckpt"))
    if has_run and not cfg.overwrite:
        previous = _stored_recipe(run_dir).get("recipe")
        what = f"a run of recipe '{previous}'" if previous else "a run"
        raise RunError(f"{run_dir} already holds {what}. Pass resume=true to continue it, run=<new name> "
                       "for a separate run, or overwrite=true to replace it.")
    try:
        for name in RUN_ARTIFACTS:  # a folder with no checkpoint is not a run: what it holds is replaced
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "recipe.yaml", portable_yaml(cfg))
    except OSError as e:
        raise RunError(f"cannot write the run folder {run_dir}: {e.strerror or e}. Make it writable, or choose "
                       f"another place with paths.runs=/writable/folder.") from None
    return run_dir


def write_student_arch(run_dir: Path, arch: str, arch_kwargs: dict) -> None:
    """The student architecture the build decided (a Tucker student's ranks), beside the recipe that asked for it:
    what `dfkd-export` rebuilds the student from."""
    write_text(Path(run_dir) / "student_arch.yaml", OmegaConf.to_yaml({"arch": arch, "arch_kwargs": arch_kwargs}))


def read_student_arch(run_dir: Path, recipe) -> tuple[str, dict]:
    """(arch, arch_kwargs) of a run's student: as the build decided it, or as the recipe gives it (older runs)."""
    path = Path(run_dir) / "student_arch.yaml"
    if path.is_file():
        built = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        return built["arch"], built["arch_kwargs"] or {}
    return recipe.student.arch, OmegaConf.to_container(recipe.student, resolve=True).get("arch_kwargs") or {}


def portable_yaml(cfg: DictConfig) -> str:
    """The resolved recipe as YAML, with the shipped teachers' folder written as `${dfkd_teachers:}` (resolved again
    when read): a run folder, and a resume or `bench --resume` of it, stays valid when the checkout moves."""
    return OmegaConf.to_yaml(OmegaConf.create(relocatable(to_plain(cfg))))


def relocatable(value):
    """`value` (a plain container or string) with every path into the shipped teachers' folder written as
    `${dfkd_teachers:}/...`, so that it names the same file wherever the checkout is."""
    from dfkd.resources import TEACHERS_DIR

    if isinstance(value, dict):
        return {k: relocatable(x) for k, x in value.items()}
    if isinstance(value, list):
        return [relocatable(x) for x in value]
    shipped = str(TEACHERS_DIR) + "/"
    if isinstance(value, str) and value.startswith(shipped):
        return "${dfkd_teachers:}/" + value[len(shipped):]
    return value


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    from dfkd.models.files import read_checkpoint
    from dfkd.errors import CheckpointError

    ckpt = resume_checkpoint(cfg)
    if not ckpt.is_file():
        raise RunError(f"resume={cfg.resume} but {ckpt} does not exist: nothing to resume. "
                       f"Drop resume to start run '{cfg.run}' fresh.")
    try:
        state = read_checkpoint(ckpt, "checkpoint")
    except CheckpointError as e:
        best = run_dir / "best.ckpt"
        alt = (f"best.ckpt is intact: resume from it with resume=best, or start over with overwrite=true."
               if ckpt.name != best.name and _readable(best) else "start over with overwrite=true.")
        raise RunError(f"{e}. Nothing was changed; {alt}") from None
    per_rank = (state.get("dfkd") or {}).get("per_rank") or []
    devices, nodes = cfg.trainer.devices, cfg.trainer.num_nodes
    if per_rank and str(devices).isdigit() and int(devices) * int(nodes) != len(per_rank):
        raise RunError(f"{ckpt} was written by {len(per_rank)} processes but this run would have "
                       f"{int(devices) * int(nodes)}; resume with trainer.devices={len(per_rank)}.")
    stored = _stored_recipe(run_dir)
    if stored.get("recipe") not in (None, cfg.recipe):
        raise RunError(f"{run_dir} holds a run of recipe '{stored['recipe']}', not '{cfg.recipe}'.")
    changed = _differences(cfg, stored, RESUME_MAY_CHANGE)
    if changed:
        lines = "\n".join(f"  {k}: the run has {then!r}, this command {now!r}"
                          for k, (then, now) in list(changed.items())[:10])
        more = f"\n  ... and {len(changed) - 10} more" if len(changed) > 10 else ""
        raise RunError(f"{run_dir} was started with other settings, which a resume cannot change:\n{lines}{more}\n"
                       f"Resume with the run's own settings (its recipe.yaml), or start a new run with "
                       f"run=<new name>.")


def settings_changed(cfg, run_dir: Path, may_change: tuple[str, ...] = RESUME_MAY_CHANGE) -> list[str]:
    """The settings (dotted keys) in which `cfg` differs from the run folder's recipe.yaml, leaving out those
    starting with a prefix in `may_change` (by default those a resume may change): empty when `cfg` would continue
    that run."""
    return list(_differences(cfg, _stored_recipe(run_dir), may_change))


def _differences(cfg, stored: dict, may_change: tuple[str, ...]) -> dict[str, tuple]:
    """{dotted key: (stored value, value in cfg)} for every setting that differs, but those `may_change`."""
    now, then = _flat(to_plain(cfg)), _flat(stored)
    return {k: (then.get(k), now.get(k)) for k in sorted(now.keys() | then.keys())
            if not k.startswith(may_change) and then.get(k) != now.get(k)}


def _readable(path: Path) -> bool:
    from dfkd.models.files import read_checkpoint
    from dfkd.errors import CheckpointError

    try:
        return path.is_file() and bool(read_checkpoint(path))
    except CheckpointError:
        return False


def _stored_recipe(run_dir: Path) -> dict:
    f = run_dir / "recipe.yaml"
    return OmegaConf.to_container(OmegaConf.load(f), resolve=True) if f.is_file() else {}


def _flat(d, prefix="") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_text(path: Path, text: str) -> None:
    """Write atomically (`checkpoint_io.atomic_write`): a crash never leaves half a file in place of a whole one."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, obj: dict) -> None:
    try:
        write_text(path, json.dumps(obj, indent=2))
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}. Make the folder writable (or free disk space); "
                       f"the run's checkpoints are intact.") from None


def versions() -> dict:
    """Versions of what a run's numbers depend on, recorded in every summary.json."""
    import kornia
    import pytorch_lightning as pl
    import timm
    import torch
    import torchvision

    from dfkd import __version__

    return {"dfkd": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pytorch_lightning": pl.__version__, "timm": timm.__version__, "kornia": kornia.__version__,
            "python": platform.python_version()}
