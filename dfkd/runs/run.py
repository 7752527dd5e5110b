"""`main(cfg)`: one run of a composed recipe, dispatched on its `task`:

    distill   run_distill(cfg): seed, build teacher / student / synthesizer, train (fresh or resumed), then write
              summary.json and export the student (this module)
    teacher   train_teacher(cfg): supervised training of a teacher on real data (dfkd.runs.teacher_run)

`trainer.max_minutes` stops training at a wall-clock budget (what `python -m dfkd.bench --minutes` sets).
Everything before `trainer.fit` runs once per process under DDP (Lightning re-executes the command for ranks
1..N), so folder checks and writes are done by rank 0 only (dfkd.runs.rundir).
"""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from dfkd.augment import build_augment
from dfkd.data import SCORED_SPLITS, StepDataset, build_splits, image_shape
from dfkd.errors import RunError
from dfkd.loop.guards import at_chance
from dfkd.loop.module import DistillModule
from dfkd.models import count_params
from dfkd.models.evaluate import evaluate
from dfkd.runs.build import build_student, build_synthesizer
from dfkd.runs.callbacks import (CurveLogger, ImageGridLogger, KillAt, RunProgressBar, SynthesisCostNote,
                                 save_image_grid)
from dfkd.runs.config import ConfigError, to_plain, unset_values_message
from dfkd.runs.console import quiet_expected_warnings, run_line
from dfkd.runs.curve import append_curve
from dfkd.runs.rundir import (is_rank_zero, prepare_run_dir, relocatable, resume_checkpoint, run_dir_of, versions,
                              write_json, write_student_arch)
from dfkd.runs.summary import report, score, split_roles
from dfkd.runs.trainer import best_score, build_timer, build_trainer, device_of, stopped_by_budget
from dfkd.teachers.build import build_teacher, check_teacher_accuracy, teacher_normalization


def main(cfg: DictConfig) -> dict | None:
    from dfkd.runs.plugins import load_plugins
    from dfkd.runs.teacher_run import train_teacher

    quiet_expected_warnings()
    load_plugins(cfg.plugins)
    tasks = {"distill": run_distill, "teacher": train_teacher}
    if cfg.task not in tasks:
        raise RunError(f"unknown task {cfg.task!r}; a recipe's task is one of {', '.join(tasks)}")
    unset = unset_values_message(cfg)
    if unset:
        raise ConfigError(unset)
    return tasks[cfg.task](cfg)


def run_distill(cfg: DictConfig) -> dict | None:
    t_start = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    splits = build_splits(cfg.data)
    teacher = build_teacher(cfg)
    built = build_student(cfg, teacher)
    student = built.classifier
    synthesizer = build_synthesizer(cfg, teacher)
    run_dir = run_dir_of(cfg)
    teacher_acc = {}
    if is_rank_zero() and (cfg.teacher.check_accuracy or teacher.queries is None):  # queries cost: may skip
        with teacher.counting_as("teacher_check"):  # a black box's answers here are counted apart
            teacher_acc = score(teacher, splits)
        check_teacher_accuracy(cfg, teacher, teacher_acc["tune"], len(splits.tune))
    initial_acc = evaluate(student, splits.report) if is_rank_zero() else None  # before any distillation (a figure)

    d = cfg.distill
    timer = build_timer(cfg.trainer.max_minutes)
    mean, std = teacher_normalization(cfg)
    shape = image_shape(cfg.data)
    module = DistillModule(teacher, student, synthesizer, to_plain(d), to_plain(cfg.bank),
                           build_augment(to_plain(cfg.augment), shape[1:]), num_classes=cfg.data.num_classes,
                           image_shape=shape, mean=mean, std=std, seed=cfg.seed,
                           timer=timer, lr_settings=_lr_settings(cfg))
    callbacks = [timer, RunProgressBar(), SynthesisCostNote(),
                 ImageGridLogger(cfg.log.image_every, cfg.log.grid_size), CurveLogger(run_dir / "curve.csv")]
    if cfg.debug.kill_at_iteration is not None:
        callbacks.append(KillAt(cfg.debug.kill_at_iteration))
    trainer = build_trainer(cfg, run_dir, callbacks, int(d.epochs))

    g = torch.Generator().manual_seed(int(cfg.seed))  # loaders draw from their own RNG, not the global one
    steps = StepDataset(int(d.iterations_per_epoch) * trainer.world_size)  # DDP shards it across ranks
    val_loaders = [DataLoader(getattr(splits, split), batch_size=int(cfg.data.eval_batch_size), shuffle=False,
                              num_workers=int(cfg.data.num_workers)) for split in SCORED_SPLITS]
    if is_rank_zero():  # every start-up check has passed: only now is anything written
        prepare_run_dir(cfg)
        write_student_arch(run_dir, built.arch, built.arch_kwargs)
        print(run_line(cfg, teacher.params, count_params(student.model), device_of(trainer), run_dir), flush=True)
    ckpt = resume_checkpoint(cfg)
    trainer.fit(module, DataLoader(steps, batch_size=1, generator=g), val_loaders,
                ckpt_path=str(ckpt) if ckpt else None)
    if module.query_budget_spent:  # stopped within an epoch: checkpoint where it stopped (every rank takes part)
        trainer.save_checkpoint(run_dir / "last.ckpt")
    if not trainer.is_global_zero:
        return None
    summary = _finish(cfg, run_dir, module, trainer, splits, teacher, built, teacher_acc, initial_acc)
    summary["wall_time_s"] = time.perf_counter() - t_start
    summary["stopped_by_budget"] = stopped_by_budget(timer)
    # a student no better than chance is said so plainly (a budget far too short, most often)
    summary["student"]["at_chance"] = at_chance(summary["student"]["tune_acc"], cfg.data.num_classes)
    write_json(run_dir / "summary.json", summary)
    print(report(summary, run_dir))
    return summary


def _query_summary(cfg, module, teacher) -> dict:
    if teacher.queries is None:  # not paid per query
        return {}
    return {"queries": int(module.totals["queries"]), "max_queries": cfg.teacher.max_queries,
            "queries_teacher_check": teacher.counts.get("teacher_check", 0),
            "stopped_by_query_budget": bool(module.query_budget_spent),
            "teacher_access": cfg.teacher.access, "teacher_top_k": cfg.teacher.top_k}


def _lr_settings(cfg) -> dict[str, str]:
    """The learning rates a divergence message names: the student's, and the synthesizer's (any `*lr*` key)."""
    synth = ", ".join(f"synthesizer.{k}={v}" for k, v in cfg.synthesizer.items() if "lr" in str(k) and v is not None)
    return {"student": f"distill.optimizer.lr={cfg.distill.optimizer.lr}",
            "synthesizer": synth or "the synthesizer's loss weights"}


def _finish(cfg, run_dir, module, trainer, splits, teacher, built, teacher_acc, initial_acc) -> dict:
    """Score and export the final student, save the last image grid; the run's summary."""
    from dfkd.runs.export import export_run

    d = cfg.distill
    scored = module.scored_student  # the student, or its weight average with distill.ema_decay
    student_acc = score(scored, splits, device=module.device)
    append_curve(run_dir / "curve.csv", module.iteration, module.totals["fit_seconds"],
                 int(module.totals["images_synthesized"]), student_acc, "final",
                 int(module.totals["queries"]) if module.queries is not None else None)
    # the student as training left it (== last.ckpt, unless the time budget stopped it within an epoch)
    export_path = export_run(run_dir, weights=scored.model.state_dict())
    student = built.classifier
    if module.last_synth is not None:
        save_image_grid(module.last_synth.images, run_dir / "samples.png")
    t_params = teacher.params
    return {
        "recipe": cfg.recipe, "run": str(cfg.run), "synthesizer": cfg.synthesizer.name, "seed": int(cfg.seed),
        "resumed": bool(cfg.resume),
        "teacher": {"arch": cfg.teacher.arch, "checkpoint": relocatable(cfg.teacher.checkpoint),
                    "endpoint": cfg.teacher.endpoint, "access": cfg.teacher.access, "params": t_params,
                    "tune_acc": teacher_acc.get("tune"), "report_acc": teacher_acc.get("report")},
        "student": {"arch": built.arch, "arch_kwargs": built.arch_kwargs,
                    "params": count_params(student.model),
                    "report_acc": student_acc["report"], "tune_acc": student_acc["tune"],
                    "weights": (f"moving average of the student's weights (distill.ema_decay={module.ema_decay})"
                                if module.student_ema is not None else "the student's final weights"),
                    "initial_report_acc": initial_acc, "best_tune_acc": best_score(trainer)},
        "compression_ratio": t_params / count_params(student.model) if t_params else None,
        **_query_summary(cfg, module, teacher),
        "splits": split_roles(cfg, splits),
        "fit_time_s_total": module.totals["fit_seconds"],
        "synthesis_time_s": module.totals["synth_seconds"],
        "images_synthesized": int(module.totals["images_synthesized"]),
        "iterations": module.iteration, "epochs": trainer.current_epoch,
        "planned_iterations": int(d.epochs) * int(d.iterations_per_epoch),
        "budget_minutes": cfg.trainer.max_minutes,
        "kd_steps": module.iteration * int(d.kd_steps),
        "device": device_of(trainer), "world_size": trainer.world_size,
        "versions": versions(), "exported_student": str(export_path),
    }
