"""Benchmark: every embedded recipe under the same conditions, one table and one plot.

    python -m dfkd.bench                          # every embedded distillation recipe, seed 0, full recipes
    python -m dfkd.bench --suite cifar10 --set data.root=PATH/train.tar.gz   # the CIFAR-10 CPU tier
    python -m dfkd.bench --minutes 10             # stop each method at the same 10-minute training budget
    python -m dfkd.bench dafl_lenet dfad_lenet --seeds 0 1 2
    python -m dfkd.bench --seeds 0 1 2 --jobs 18 --set trainer.accelerator=gpu   # all at once on one GPU
    python -m dfkd.bench --throughput             # synthesis / distillation speed at paper scale (dfkd.bench.throughput)
    python -m dfkd.bench --suite cifar10 --set data.root=... --resume   # run only what an earlier sitting left

Each (recipe, seed) is a separate `python -m dfkd.runs.cli recipe=... seed=...` process (a crash or a divergence
costs that run only; its log is kept in `<out>/logs/`). Results come from each run's own files: summary.json
for the figures and curve.csv (tuning- and reporting-split accuracy after every epoch, with the training seconds so
far) for the accuracy-vs-time plot, which shows the reporting split. Writes, after every run (an interrupted
benchmark keeps what it measured):

    <out>/results.md   <out>/results.csv   <out>/accuracy_vs_time.png   <out>/runs/<recipe>_s<seed>/
    <out>/readme_table.md (the README's table: one line per recipe)

With `--resume`, a (recipe, seed) whose run folder already holds a finished run with the same settings (its
summary.json, and a recipe.yaml equal to what this command would run) is read back instead of run again, so a
sitting longer than one session is made in parts; results.md says which rows were read back.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from dfkd.errors import STILL_AT_CHANCE
from dfkd.runs.curve import read_curve

CSV_FIELDS = ("recipe", "synthesizer", "seed", "status", "teacher", "student", "teacher_acc", "student_acc",
              "student_over_teacher", "initial_student_acc", "wall_time_s", "fit_time_s", "synthesis_time_s",
              "images_synthesized", "iterations", "planned_iterations", "stopped_by_budget", "student_params",
              "compression_ratio", "queries", "device", "log")

# Published numbers (each paper, and the FastDFKD and CMI READMEs), shown beside the measurements for orientation only: other data,
# other teachers, GPU-hours of synthesis as printed by the FastDFKD paper (Source A) unless noted.
PUBLISHED = [
    # method, setting, teacher, student, note
    ("DeepInversion (DeepInv-2k)", "CIFAR-10 ResNet-34 -> ResNet-18", 95.70, 93.26, "42.1 h synthesis"),
    ("DAFL", "CIFAR-10 ResNet-34 -> ResNet-18", 95.58, 92.22, "DAFL paper Table 3"),
    ("ZSKT", "CIFAR-10 WRN-40-2 -> WRN-16-1", 95.13, 83.69, "ZSKT paper Fig. 2 data"),
    ("DFAD", "CIFAR-10 ResNet-34-8x -> ResNet-18-8x", 95.5, 93.3, "DFAD paper Table 2"),
    ("FastDFKD (Fast-10)", "CIFAR-10 ResNet-34 -> ResNet-18", 95.70, 94.05, "0.28 h synthesis"),
    ("FastDFKD (Fast-2)", "CIFAR-10 WRN-40-2 -> WRN-16-1", 94.87, 88.36, "0.03 h synthesis"),
    ("DFQ", "CIFAR-10 ResNet-34 -> ResNet-18", 95.70, 94.61, "8.79 h synthesis"),
    ("CMI (CMI-500)", "CIFAR-10 ResNet-34 -> ResNet-18", 95.70, 94.84, "19.0 h synthesis"),
    ("DAFL", "MNIST LeNet-5 -> LeNet-5-half", 98.91, 98.20, "DAFL paper Table 1"),
    ("DFAD", "MNIST LeNet-5 -> LeNet-5-half", 98.9, 98.3, "DFAD paper Table 2"),
    ("KegNet", "SVHN ResNet-14 -> Tucker ResNet-14 (1.65x)", 93.23, 87.26, "KegNet paper"),
]


# Each suite: which distillation recipes it runs, and its reporting split (every accuracy in results.md). The
# tuning split every choice is made on (best.ckpt, the chance guard, recipe settings) is part of the teacher's
# training images (`data.tune_size`): dfkd.data.sets.Splits.
SUITES = {
    "mnist": "the reporting split: 1,000 real MNIST digits held out of the embedded set (the last 100 a class)",
    "cifar10": "the reporting split: 5,000 real CIFAR-10 images held out of data.root (the last 500 of each class)",
}


def _in_suite(suite: str, name: str, cfg) -> bool:
    if cfg.task != "distill" or cfg.get("plugins"):  # the plug-in example is not a method of dfkd's
        return False
    if suite == "mnist":
        return cfg.data.name == "mnist_embedded"
    # the CPU tier: `<method>_cifar10` on a CIFAR-10 folder or archive (the paper-scale recipes are named by pair)
    return name.endswith("_cifar10") and cfg.data.name == "imagefolder"


def suite_recipes(suite: str = "mnist") -> list[str]:
    """The distillation recipes of a suite, in recipe-name order."""
    from dfkd.runs.config import compose, list_recipes

    return [name for name in list_recipes() if _in_suite(suite, name, compose(name))]


def embedded_recipes() -> list[str]:
    """Distillation recipes that run on the embedded data with no plug-ins."""
    return suite_recipes("mnist")


def describe(model: dict) -> str:
    """`resnet8(width=0.5)`, `tucker(lenet5: conv3)`, `tucker(resnet20: 19 convs)`: the architecture with the
    arguments that set its size (a Tucker student's layers named up to three, counted beyond, to fit a table)."""
    kw = model.get("arch_kwargs") or {}
    if model["arch"] == "tucker":
        layers = list(kw.get("layers", []))
        return f"tucker({kw.get('base')}: {', '.join(layers) if len(layers) <= 3 else f'{len(layers)} convs'})"
    return model["arch"] + (f"({', '.join(f'{k}={v}' for k, v in kw.items())})" if kw else "")


def run_one(recipe: str, seed: int, out: Path, minutes: float | None, overrides: list[str]) -> dict:
    """One training process; returns its row of results.csv."""
    name = f"{recipe}_s{seed}"
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"
    cmd = [sys.executable, "-m", "dfkd.runs.cli", f"recipe={recipe}", *run_args(recipe, seed, out, minutes, overrides)]
    t0 = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    row = {"recipe": recipe, "seed": seed, "log": str(log), "wall_time_s": round(time.perf_counter() - t0, 1)}
    if rc != 0 or not (runs / name / "summary.json").is_file():
        row["status"] = failure_status(rc, log, runs / name)
        return row
    return read_run(recipe, seed, out)


def failure_status(rc: int, log: Path, run_dir: Path) -> str:
    """Why a run left no summary: a student the chance guard stopped (with its last tuning-split score, the one
    the guard read, from the curve), or an exit code to look up in the log."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    if STILL_AT_CHANCE not in text:
        return f"failed (exit {rc}, see log)"
    curve = run_dir / "curve.csv"
    points = read_curve(curve) if curve.is_file() else []
    if not points:
        return "stopped at chance"
    last = points[-1]
    return f"stopped at chance ({100 * last['tune_acc']:.1f} % on the tuning split at iteration {last['iteration']})"


def run_args(recipe: str, seed: int, out: Path, minutes: float | None, overrides: list[str]) -> list[str]:
    """The overrides one bench run applies to its recipe (its command line after `recipe=`)."""
    extra = [f"trainer.max_minutes={minutes}"] if minutes is not None else []
    return [f"run={recipe}_s{seed}", f"seed={seed}", f"paths.runs={out / 'runs'}", "overwrite=true", *overrides, *extra]


# what may differ between a bench run and a finished run it reuses (`--resume`): where files go, what is logged
REUSE_MAY_CHANGE = ("resume", "overwrite", "paths.", "log.", "trainer.log_every_n_steps")


def finished_run(recipe: str, seed: int, out: Path, minutes: float | None, overrides: list[str]) -> dict | None:
    """With `--resume`: the results row of a run this bench would make that an earlier sitting already finished in
    `out` (its summary.json is there and its recipe.yaml has the same settings), or None: it must run."""
    run_dir = out / "runs" / f"{recipe}_s{seed}"
    if not (run_dir / "summary.json").is_file() or not (run_dir / "recipe.yaml").is_file():
        return None
    changed = settings_not_reusable(recipe, seed, out, minutes, overrides)
    if changed:
        print(f"{run_dir.name}: the finished run there has other settings ({', '.join(changed[:3])}"
              f"{', ...' if len(changed) > 3 else ''}): running it again", flush=True)
        return None
    return {**read_run(recipe, seed, out), "reused": True}


def settings_not_reusable(recipe: str, seed: int, out: Path, minutes: float | None, overrides: list[str]) -> list[str]:
    """The settings in which the finished run in `out` differs from the one this bench would make, leaving out where
    files go: empty when the run can be read back."""
    from dfkd.runs.config import compose
    from dfkd.runs.rundir import settings_changed

    cfg = compose(recipe, run_args(recipe, seed, out, minutes, overrides))
    return settings_changed(cfg, out / "runs" / f"{recipe}_s{seed}", may_change=REUSE_MAY_CHANGE)


def read_run(recipe: str, seed: int, out: Path) -> dict:
    """The results row of a finished run, from its summary.json."""
    name = f"{recipe}_s{seed}"
    row = {"recipe": recipe, "seed": seed, "log": str(out / "logs" / f"{name}.log")}
    s = json.loads((out / "runs" / name / "summary.json").read_text())
    t, st = s["teacher"], s["student"]
    row.update({
        "synthesizer": s["synthesizer"], "status": "ok", "teacher": describe(t), "student": describe(st),
        "teacher_acc": t["report_acc"], "student_acc": st["report_acc"],
        "student_over_teacher": st["report_acc"] / t["report_acc"] if t["report_acc"] else None,
        "initial_student_acc": st.get("initial_report_acc"), "wall_time_s": round(s["wall_time_s"], 1),
        "fit_time_s": round(s["fit_time_s_total"], 1), "synthesis_time_s": round(s["synthesis_time_s"], 1),
        "images_synthesized": s["images_synthesized"], "iterations": s["iterations"],
        "planned_iterations": s.get("planned_iterations"), "stopped_by_budget": s.get("stopped_by_budget", False),
        "student_params": st["params"],
        "compression_ratio": round(s["compression_ratio"], 2) if s["compression_ratio"] else None,
        "queries": s.get("queries"), "device": s["device"]})
    return row


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def failure_summary(rows: list[dict], recipe: str) -> str:
    """A recipe none of whose runs finished: what the chance guard said, or how many runs failed."""
    statuses = [r["status"] for r in rows if r["recipe"] == recipe and r.get("status") != "ok"]
    if all(st.startswith("stopped at chance") for st in statuses):
        return "; ".join(statuses)
    return f"failed ({len(statuses)} runs, see logs/)"


def aggregate(rows: list[dict]) -> list[dict]:
    """Per recipe: mean and spread (sample std over seeds) of the measured figures."""
    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        ok = [r for r in rows if r["recipe"] == recipe and r.get("status") == "ok"]
        failed = sum(1 for r in rows if r["recipe"] == recipe and r.get("status") != "ok")
        if not ok:
            out.append({"recipe": recipe, "runs": 0, "failed": failed, "why": failure_summary(rows, recipe)})
            continue
        agg = {"recipe": recipe, "runs": len(ok), "failed": failed, "synthesizer": ok[0]["synthesizer"],
               "pair": f"{ok[0]['teacher']} -> {ok[0]['student']}", "student_params": ok[0]["student_params"],
               "compression_ratio": ok[0]["compression_ratio"], "device": ok[0]["device"],
               "stopped_by_budget": sum(bool(r["stopped_by_budget"]) for r in ok)}
        for key in ("teacher_acc", "student_acc", "student_over_teacher", "initial_student_acc", "wall_time_s",
                    "fit_time_s", "synthesis_time_s", "images_synthesized", "queries"):
            vals = [float(r[key]) for r in ok if r.get(key) is not None]
            agg[key] = mean_std(vals) if vals else (float("nan"), 0.0)
        out.append(agg)
    return out


def seconds_to_reach(curve: list[dict], acc: float) -> float | None:
    """Training seconds at the first scored point whose reporting-split accuracy is at least `acc` (None: never)."""
    return next((p["fit_seconds"] for p in curve if p["report_acc"] is not None and p["report_acc"] >= acc), None)


def against_baseline(rows: list[dict], out: Path, baseline: str = "deepinversion") -> list[str]:
    """For every other recipe run in this sitting with the same seed as a `baseline` run: when (training
    seconds, and as a fraction of the baseline's whole training time) its curve first reaches the baseline's
    final accuracy. FastDFKD's claim is this fraction against DeepInversion."""
    ok = [r for r in rows if r.get("status") == "ok"]
    lines = []
    for base in (r for r in ok if r["synthesizer"] == baseline):
        target, base_time = float(base["student_acc"]), float(base["fit_time_s"])
        for r in ok:
            if r is base or r["seed"] != base["seed"]:
                continue
            curve_file = out / "runs" / f"{r['recipe']}_s{r['seed']}" / "curve.csv"
            t = seconds_to_reach(read_curve(curve_file), target) if curve_file.is_file() else None
            goal = f"{base['recipe']}'s final {100 * target:.1f} %"
            lines.append(f"- seed {r['seed']}: {r['recipe']} reaches {goal} after {t:.0f} s of training, "
                         f"**{t / base_time:.2f}x** {base['recipe']}'s {base_time:.0f} s" if t is not None else
                         f"- seed {r['seed']}: {r['recipe']} never reaches {goal}")
    return lines


def _pm(ms: tuple[float, float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    m, sd = ms
    if math.isnan(m):
        return "-"
    return fmt.format(m * scale) + (f" ± {fmt.format(sd * scale)}" if sd else "")


def write_markdown(path: Path, rows: list[dict], args, command: str, started: str, elapsed: float) -> None:
    agg = aggregate(rows)
    seeds = sorted({r["seed"] for r in rows})
    device = next((a["device"] for a in agg if a.get("device")), "?")
    budget = f"{args.minutes:g} minutes of training per run" if args.minutes else "none (every recipe runs in full)"
    lines = [
        "# dfkd benchmark", "",
        f"- command: `{command}`",
        f"- started {started}, whole command {elapsed / 60:.1f} min; device: {device}; python {platform.python_version()}",
        f"- budget: {budget}; seeds: {', '.join(map(str, seeds))} (mean ± sample std over seeds)",
        f"- accuracy: top-1 on {SUITES[args.suite]}, never used for training or for any choice (those are made on "
        "the tuning split, part of the teacher's training images); the exported student is the run's final one",
    ]
    reused = [f"{r['recipe']} seed {r['seed']}" for r in rows if r.get("reused")]
    if reused:
        lines.append(f"- resumed (`--resume`): {len(reused)} of {len(rows)} runs were measured by an earlier command "
                     f"into this folder and read back, not run again ({', '.join(reused)}); the minutes above are "
                     "this command's")
    lines += [
        "",
        "| recipe | method | teacher -> student | teacher acc % | student acc % | student / teacher | "
        "before distillation % | wall time s | synthesis s | images synthesized | student params | compression | "
        "stopped by budget | teacher queries |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in agg:
        if not a["runs"]:
            lines.append(f"| {a['recipe']} | {a['why']} |" + " |" * 12)
            continue
        lines.append(
            f"| {a['recipe']} | {a['synthesizer']} | {a['pair']} | {_pm(a['teacher_acc'], 100)} | "
            f"**{_pm(a['student_acc'], 100)}** | {_pm(a['student_over_teacher'], 1, '{:.3f}')} | "
            f"{_pm(a['initial_student_acc'], 100)} | {_pm(a['wall_time_s'], 1, '{:.0f}')} | "
            f"{_pm(a['synthesis_time_s'], 1, '{:.0f}')} | {_pm(a['images_synthesized'], 1, '{:,.0f}')} | "
            f"{a['student_params']:,} | {_ratio(a)} | {a['stopped_by_budget']}/{a['runs']} | {_queries(a)} |")
    reach = against_baseline(rows, Path(path).parent)
    if reach:
        lines += ["", "Time to DeepInversion's final accuracy (first end-of-epoch score at or above it):", "", *reach]
    lines += ["", "![accuracy against training time](accuracy_vs_time.png)", "",
              "## Published results (for reference; not measured by dfkd)", "",
              "Reported by the papers or the FastDFKD/CMI READMEs on other data, teachers "
              "and hardware: orientation only, not comparable with the table above.", "",
              "| method | setting | teacher % | student % | note |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {s} | {t:.2f} | {st:.2f} | {n} |" for m, s, t, st, n in PUBLISHED]
    path.write_text("\n".join(lines) + "\n")


def _ratio(a: dict) -> str:
    return f"{a['compression_ratio']:.1f}x" if a["compression_ratio"] else "black-box teacher"


def _queries(a: dict) -> str:
    """Images sent to a black-box teacher; '-' for a white-box one (nothing counted)."""
    return "-" if math.isnan(a["queries"][0]) else _pm(a["queries"], 1, "{:,.0f}")  # nan: no black-box run


def write_compact_table(path: Path, rows: list[dict]) -> None:
    """The README's results table: one line per recipe, mean ± std over seeds."""
    lines = ["| recipe | teacher -> student (compression) | teacher % | student % | wall s | images synthesized | "
             "teacher queries |", "|---|---|---|---|---|---|---|"]
    for a in aggregate(rows):
        if not a["runs"]:
            lines.append(f"| `{a['recipe']}` | {a['why']} | | | | | |")
            continue
        lines.append(f"| `{a['recipe']}` | {a['pair']} ({_ratio(a)}) | "
                     f"{_pm(a['teacher_acc'], 100)} | **{_pm(a['student_acc'], 100)}** | "
                     f"{_pm(a['wall_time_s'], 1, '{:.0f}')} | {_pm(a['images_synthesized'], 1, '{:,.0f}')} | "
                     f"{_queries(a)} |")
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot(path: Path, rows: list[dict], out: Path, minutes: float | None, title: str = "",
         by_queries: bool = False) -> None:
    """Held-out accuracy against training minutes (or, `by_queries`, against the images sent to a black-box
    teacher), from each run's curve.csv: one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    for i, recipe in enumerate(recipes):
        labelled = False
        for r in rows:
            curve_file = out / "runs" / f"{recipe}_s{r['seed']}" / "curve.csv"
            if r["recipe"] != recipe or r.get("status") != "ok" or not curve_file.is_file():
                continue
            pts = read_curve(curve_file)
            if by_queries:
                pts = [p for p in pts if p["queries"] is not None]
                if not pts:
                    continue
            xs = [p["queries"] if by_queries else p["fit_seconds"] / 60 for p in pts]
            ax.plot(xs, [100 * p["report_acc"] for p in pts], marker=".",
                    color=colors[i % len(colors)], label=None if labelled else recipe, alpha=0.9)
            labelled = True
    if minutes and not by_queries:
        ax.axvline(minutes, color="grey", linestyle="--", linewidth=1, label=f"budget {minutes:g} min")
    ax.set_xlabel("images sent to the teacher (queries)" if by_queries else "training time (minutes)")
    ax.set_ylabel("student accuracy on the reporting split (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"dfkd{' ' + title if title else ''}: student accuracy against "
                 f"{'teacher queries' if by_queries else 'time'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(args, command: str) -> int:
    from dfkd.runs.config import list_recipes

    recipes = args.recipes or suite_recipes(args.suite)
    unknown = [r for r in recipes if r not in list_recipes()]
    if unknown:
        print(f"error: unknown recipe(s) {unknown}; `python train.py --help` lists them", file=sys.stderr)
        return 2
    problem = _check_composes(recipes, args.set)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out or ("bench" if args.suite == "mnist" else f"bench/{args.suite}"))
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = dt.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    jobs = [(r, s) for r in recipes for s in args.seeds]
    rows: list[dict] = []
    if args.resume:
        rows = [row for r, s in jobs if (row := finished_run(r, s, out, args.minutes, args.set))]
        read_back = {(row["recipe"], row["seed"]) for row in rows}
        jobs = [job for job in jobs if job not in read_back]
        if rows:
            print(f"--resume: {len(rows)} finished runs read back from {out / 'runs'}", flush=True)
    print(f"{len(jobs)} runs, {args.jobs} at a time; logs in {out / 'logs'}", flush=True)
    n = len(rows) + len(jobs)

    def write_results() -> None:
        rows.sort(key=lambda r: (recipes.index(r["recipe"]), r["seed"]))
        write_csv(out / "results.csv", rows)
        write_compact_table(out / "readme_table.md", rows)
        write_markdown(out / "results.md", rows, args, command, started, time.perf_counter() - t0)
        plot(out / "accuracy_vs_time.png", rows, out, args.minutes, args.suite)
        if any(r.get("queries") is not None for r in rows):  # black-box recipes: their cost is queries
            plot(out / "accuracy_vs_queries.png", rows, out, None, args.suite, by_queries=True)

    if not jobs:
        write_results()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each run is its own process; threads only wait
        done = [pool.submit(run_one, recipe, seed, out, args.minutes, args.set) for recipe, seed in jobs]
        for i, future in enumerate(as_completed(done), n - len(jobs) + 1):
            row = future.result()
            rows.append(row)
            _report_row(i, n, row)
            write_results()
    print(f"\nwrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'accuracy_vs_time.png'} "
          f"({(time.perf_counter() - t0) / 60:.1f} min)")
    print((out / "results.md").read_text())
    return 0 if all(r["status"] == "ok" for r in rows) else 1


def _check_composes(recipes: list[str], overrides: list[str]) -> str | None:
    """Why a run would fail before it starts (a bad override, a data set with no path), or None."""
    from dfkd.runs.config import ConfigError, compose, unset_values_message

    for recipe in recipes:
        try:
            problem = unset_values_message(compose(recipe, overrides), how="--set ")
        except ConfigError as e:
            problem = f"{recipe}: {e}"
        if problem:
            return problem
    return None


def _report_row(i: int, n: int, row: dict) -> None:
    head = f"[{i}/{n}] {row['recipe']} seed {row['seed']}:"
    if row["status"] == "ok":
        print(f"{head} student {100 * row['student_acc']:.1f} % (teacher {100 * row['teacher_acc']:.1f} %) "
              f"in {row['wall_time_s']:.0f} s, {row['images_synthesized']:,} images"
              f"{', stopped by the budget' if row['stopped_by_budget'] else ''}", flush=True)
    else:
        print(f"{head} {row['status']}: {row['log']}", flush=True)


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dfkd.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("recipes", nargs="*", help="recipes to run (default: every recipe of the suite)")
    ap.add_argument("--suite", choices=sorted(SUITES), default="mnist",
                    help="mnist: the embedded-digit recipes (default); cifar10: the `<method>_cifar10` CPU tier "
                         "(needs --set data.root=...)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="training budget per run, the same for every method (default: run each recipe in full)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to repeat each recipe with")
    ap.add_argument("--out", default=None, help="output folder (default: bench/, or bench/<suite>/)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time (default 1: on a small CPU, concurrent runs slow each other; on a GPU or "
                         "many cores, more)")
    ap.add_argument("--resume", action="store_true",
                    help="read back the runs an earlier command finished into --out with the same settings "
                         "(their summary.json and recipe.yaml) instead of running them again; run the rest")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides applied to every run (e.g. trainer.accelerator=cpu)")
    ap.add_argument("--throughput", action="store_true",
                    help="measure synthesis and distillation speed at paper scale instead (see dfkd.bench.throughput)")
    ap.add_argument("--full", action="store_true", help="with --throughput: the full version even on a CPU")
    args = ap.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        ap.error("--minutes must be positive")
    command = "python -m dfkd.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.throughput:
        from dfkd.bench.throughput import run_throughput

        return run_throughput(Path(args.out or "bench"), full=args.full, command=command)
    return run_bench(args, command.strip())


def console() -> None:
    """The `dfkd-bench` console script."""
    sys.exit(cli())


if __name__ == "__main__":
    sys.exit(cli())
