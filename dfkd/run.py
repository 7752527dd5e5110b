"""`main(cfg)`: one run from a composed recipe. Seeds, builds the parts, trains (fresh or resumed), then
writes `checkpoints/<run>/summary.json` and exports the student.

Runs live in `<paths.runs>/<run>/` with a stable name so `resume=true` finds `last.ckpt`:
    recipe.yaml  last.ckpt  best.ckpt  tensorboard/  curve.csv  samples.png  summary.json  student.pt
`trainer.max_minutes` stops training at a wall-clock budget (what `python -m dfkd.bench --minutes` sets).
Everything before `trainer.fit` runs once per process under DDP (Lightning re-executes train.py for ranks
1..N), so folder checks and writes are done by rank 0 only.
"""
from __future__ import annotations

import copy
import json
import platform
import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader

from dfkd.augment import build_augment
from dfkd.callbacks import CurveLogger, ImageGridLogger, KillAt, RunProgressBar, TimeBudget, append_curve, save_image_grid
from dfkd.checkpoint_io import build_classifier, load_weights
from dfkd.config import to_plain
from dfkd.data import Splits, StepDataset, build_splits
from dfkd.distill import DistillModule
from dfkd.models import count_params
from dfkd.preprocess import Classifier
from dfkd.synthesizers import SYNTHESIZERS

RUN_ARTIFACTS = ("last.ckpt", "best.ckpt", "recipe.yaml", "summary.json", "student.pt", "samples.png",
                 "tensorboard", "curve.csv", "student.onnx", "student.ts")


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


def build_teacher(cfg: DictConfig) -> Classifier:
    """The frozen teacher from `cfg.teacher`, checked against the data it will be asked about."""
    t, d = cfg.teacher, cfg.data
    clf = build_classifier(t.arch, t.get("arch_kwargs") or {}, d.num_classes, d.channels, d.image_size,
                           t.get("input_size") or d.image_size, t.get("resize", "pad"), d.mean, d.std)
    if t.get("checkpoint"):
        path = Path(t.checkpoint)
        if not path.is_file():
            hint = f" Create it with `python train.py recipe={t.train_recipe}`." if t.get("train_recipe") else ""
            raise RunError(f"teacher checkpoint {path} not found.{hint} Or set teacher.checkpoint=/path/to/file.")
        meta = load_weights(clf.model, path)
        for key in ("num_classes", "in_chans", "image_size"):
            want = {"num_classes": d.num_classes, "in_chans": d.channels, "image_size": d.image_size}[key]
            if key in meta and meta[key] != want:
                raise RunError(f"teacher {path} was trained with {key}={meta[key]} but data '{d.name}' has "
                               f"{want}; pick the teacher that matches the data (teacher=... / data=...).")
    elif not t.get("random_init", False):
        raise RunError("teacher.checkpoint is not set. Point it at the teacher's weights "
                       "(teacher.random_init=true builds a random teacher, for smoke tests only).")
    clf.eval().requires_grad_(False)
    with torch.no_grad():
        probe = torch.rand(2, d.channels, d.image_size, d.image_size)
        try:
            out = clf(probe)
        except RuntimeError as e:
            raise RunError(f"teacher {t.arch} cannot take {d.channels}x{d.image_size}x{d.image_size} images of "
                           f"data '{d.name}': {e}") from None
    if out.shape[1] != d.num_classes:
        raise RunError(f"teacher predicts {out.shape[1]} classes but data '{d.name}' has {d.num_classes}")
    return clf


def build_student(cfg: DictConfig, teacher: Classifier) -> Classifier:
    """The student: an architecture by name, or (`arch: tucker`) the teacher compressed by Tucker-2
    decomposition, whose chosen ranks are written back into cfg.student so the run can be rebuilt."""
    s, d, p = cfg.student, cfg.data, teacher.preprocess
    if s.arch == "tucker" and "ranks" not in (s.get("arch_kwargs") or {}):
        from dfkd.models.tucker import compress

        kw = to_plain(s).get("arch_kwargs") or {}
        model, ranks = compress(teacher.model, kw.get("layers"), kw.get("rank", "vbmf"))
        with open_dict(cfg):
            cfg.student.arch_kwargs = {"base": cfg.teacher.arch, "base_kwargs": to_plain(cfg.teacher).get("arch_kwargs") or {},
                                       "ranks": ranks, "layers": list(ranks), "rank": kw.get("rank", "vbmf")}
        return Classifier(copy.deepcopy(p), model.requires_grad_(True).train())
    return build_classifier(s.arch, s.get("arch_kwargs") or {}, d.num_classes, d.channels, d.image_size,
                            p.input_size, p.resize, d.mean, d.std)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int = 500, device="cpu") -> float:
    """Top-1 accuracy of `model` ([0,1] images in) on `dataset`."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return correct / max(total, 1)


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, max_epochs: int,
                  monitor: str | None = "val/acc", lightning_progress_bar: bool = False) -> pl.Trainer:
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    tr = cfg.trainer
    strategy = tr.strategy
    if strategy == "auto" and (int(tr.devices) > 1 or int(tr.num_nodes) > 1):
        # generator and student are updated in separate backward passes, so each pass leaves some
        # parameters unused; rank-local tensors (pixels, bank) are plain attributes, never DDP state.
        strategy = "ddp_find_unused_parameters_true"
    # two writers, so last.ckpt is rewritten every epoch whether or not the monitored metric improved
    last = ModelCheckpoint(dirpath=run_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                           enable_version_counter=False)
    ckpts = [last]
    if monitor:
        ckpts.append(ModelCheckpoint(dirpath=run_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                                     every_n_epochs=1, enable_version_counter=False))
    return pl.Trainer(
        accelerator=tr.accelerator, devices=tr.devices, num_nodes=tr.num_nodes, strategy=strategy,
        precision=tr.precision, deterministic=tr.deterministic, max_epochs=int(max_epochs),
        logger=TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        callbacks=[*ckpts, *callbacks], enable_progress_bar=lightning_progress_bar, num_sanity_val_steps=0,
        log_every_n_steps=int(tr.log_every_n_steps), enable_model_summary=False,
        check_val_every_n_epoch=int(tr.get("check_val_every_n_epoch", 1)))


def _best_score(trainer: pl.Trainer) -> float | None:
    from pytorch_lightning.callbacks import ModelCheckpoint

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_score is not None:
            return float(cb.best_model_score)
    return None


def versions() -> dict:
    import kornia
    import timm
    import torchvision

    import dfkd

    return {"dfkd": dfkd.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pytorch_lightning": pl.__version__, "timm": timm.__version__, "kornia": kornia.__version__,
            "python": platform.python_version()}


def device_of(trainer: pl.Trainer) -> str:
    root = trainer.strategy.root_device
    if root.type == "cuda":
        return f"{torch.cuda.get_device_name(root)} x{trainer.world_size}"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()}) x{trainer.world_size}"


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def main(cfg: DictConfig) -> dict | None:
    from dfkd.plugins import load_plugins

    load_plugins(cfg.get("plugins"))
    if cfg.task == "teacher":
        from dfkd.teacher import train_teacher

        return train_teacher(cfg)
    if cfg.task != "distill":
        raise RunError(f"unknown task {cfg.task!r}")
    return distill(cfg)


def distill(cfg: DictConfig) -> dict | None:
    t_start = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    splits: Splits = build_splits(cfg.data)
    teacher = build_teacher(cfg)
    student = build_student(cfg, teacher)
    run_dir = prepare_run_dir(cfg) if is_rank_zero() else run_dir_of(cfg)
    syn_cfg = dict(to_plain(cfg.synthesizer))
    data = cfg.data
    synthesizer = SYNTHESIZERS.build(syn_cfg.pop("name"), **syn_cfg, num_classes=int(data.num_classes),
                                     image_shape=(int(data.channels), int(data.image_size), int(data.image_size)),
                                     mean=list(data.mean), std=list(data.std))
    if synthesizer.uses_bn_stats:
        from dfkd.hooks import batchnorm_layers

        if not batchnorm_layers(teacher):
            raise RunError(f"synthesizer '{cfg.synthesizer.name}' matches BatchNorm statistics but teacher "
                           f"'{cfg.teacher.arch}' has no BatchNorm layer. Use a teacher with BatchNorm "
                           "(e.g. teacher=resnet8_mnist) or a generative synthesizer.")
    teacher_acc = evaluate(teacher, splits.val) if is_rank_zero() else None
    initial_acc = evaluate(student, splits.val) if is_rank_zero() else None  # before any distillation

    d = cfg.distill
    world = int(cfg.trainer.devices) * int(cfg.trainer.num_nodes) if str(cfg.trainer.devices).isdigit() else 1
    module = DistillModule(
        teacher, student, synthesizer, to_plain(d), to_plain(cfg.bank), build_augment(to_plain(cfg.augment)),
        num_classes=cfg.data.num_classes, image_shape=(cfg.data.channels, cfg.data.image_size, cfg.data.image_size),
        mean=cfg.data.mean, std=cfg.data.std, seed=cfg.seed,
        total_iterations=int(d.epochs) * int(d.iterations_per_epoch))
    callbacks = [RunProgressBar(), ImageGridLogger(cfg.log.image_every, cfg.log.grid_size),
                 CurveLogger(run_dir / "curve.csv")]
    budget = TimeBudget(cfg.trainer.max_minutes) if cfg.trainer.get("max_minutes") else None
    if budget is not None:
        callbacks.append(budget)
    if cfg.debug.get("kill_at_iteration") is not None:
        callbacks.append(KillAt(cfg.debug.kill_at_iteration))
    trainer = build_trainer(cfg, run_dir, callbacks, int(d.epochs))

    g = torch.Generator().manual_seed(int(cfg.seed))  # loaders draw from their own RNG, not the global one
    train_loader = DataLoader(StepDataset(int(d.iterations_per_epoch) * world), batch_size=1, generator=g)
    val_loader = DataLoader(splits.val, batch_size=int(cfg.data.eval_batch_size), shuffle=False,
                            num_workers=int(cfg.data.num_workers))
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(run_dir / "last.ckpt") if cfg.resume else None)

    if not trainer.is_global_zero:
        return None
    from dfkd.export import export_run

    scored = module.scored_student  # the student, or its weight average with distill.ema_decay
    student_acc = evaluate(scored, splits.val, device=module.device)
    append_curve(run_dir / "curve.csv", module.iteration, module.totals["fit_seconds"],
                 int(module.totals["images_synthesized"]), student_acc, "final")
    # the student as training left it (== last.ckpt, unless the time budget stopped it within an epoch)
    export_path = export_run(run_dir, weights=scored.model.state_dict())
    if module.last_synth is not None:
        save_image_grid(module.last_synth.images, run_dir / "samples.png")
    summary = {
        "recipe": cfg.recipe, "run": str(cfg.run), "synthesizer": cfg.synthesizer.name, "seed": int(cfg.seed),
        "resumed": bool(cfg.resume),
        "teacher": {"arch": cfg.teacher.arch, "checkpoint": cfg.teacher.get("checkpoint"),
                    "params": count_params(teacher.model), "heldout_acc": teacher_acc},
        "student": {"arch": cfg.student.arch, "arch_kwargs": to_plain(cfg.student).get("arch_kwargs") or {},
                    "params": count_params(student.model), "heldout_acc": student_acc,
                    "weights": (f"moving average of the student's weights (distill.ema_decay={module.ema_decay})"
                                if module.student_ema is not None else "the student's final weights"),
                    "initial_heldout_acc": initial_acc,
                    "best_heldout_acc": _best_score(trainer)},
        "compression_ratio": count_params(teacher.model) / count_params(student.model),
        "heldout_set": f"{cfg.data.name}: {len(splits.val)} real images never used for training",
        "wall_time_s": time.perf_counter() - t_start,
        "fit_time_s_total": module.totals["fit_seconds"],
        "synthesis_time_s": module.totals["synth_seconds"],
        "images_synthesized": int(module.totals["images_synthesized"]),
        "iterations": module.iteration, "epochs": trainer.current_epoch,
        "planned_iterations": int(d.epochs) * int(d.iterations_per_epoch),
        "budget_minutes": cfg.trainer.get("max_minutes"),
        "stopped_by_budget": bool(budget is not None and budget.stopped_early),
        "kd_steps": module.iteration * int(d.kd_steps),
        "device": device_of(trainer), "world_size": trainer.world_size,
        "versions": versions(), "exported_student": str(export_path),
    }
    write_json(run_dir / "summary.json", summary)
    print(report(summary, run_dir))
    return summary


def report(s: dict, run_dir: Path) -> str:
    return (f"\n== {s['recipe']} -> {run_dir}\n"
            f"teacher held-out acc  {s['teacher']['heldout_acc']:.4f}  ({s['teacher']['arch']}, "
            f"{s['teacher']['params']:,} params)\n"
            f"student held-out acc  {s['student']['heldout_acc']:.4f}  ({s['student']['arch']}, "
            f"{s['student']['params']:,} params, {s['compression_ratio']:.1f}x smaller)\n"
            f"images synthesized    {s['images_synthesized']:,} in {s['synthesis_time_s']:.0f} s of synthesis\n"
            f"wall time             {s['wall_time_s']:.0f} s ({s['iterations']} iterations"
            f"{', stopped by the time budget' if s.get('stopped_by_budget') else ''})\n"
            f"summary               {run_dir / 'summary.json'}\n"
            f"exported student      {s['exported_student']}  (dfkd.load_student(path))\n")
