"""The benchmark: aggregation by hand, the time budget, and a whole `python -m dfkd.bench` on tiny budgets that
must write the table, the CSV and the plot; throughput measurement on a tiny batch."""
import csv
import json
import math

import pytest
import torch

from dfkd.bench.suite import (against_baseline, aggregate, cli, describe, embedded_recipes, failure_status,
                              finished_run, mean_std, run_args, seconds_to_reach)
from dfkd.runs.curve import append_curve, read_curve
from dfkd.errors import STILL_AT_CHANCE
from dfkd.runs.export import load_student

from tests.helpers import LOOP, run, small


def test_mean_std_by_hand():
    assert mean_std([0.9]) == (0.9, 0.0)
    m, sd = mean_std([0.8, 0.9, 1.0])
    assert m == pytest.approx(0.9)
    assert sd == pytest.approx(math.sqrt((0.01 + 0 + 0.01) / 2))  # sample std, n - 1


def test_aggregate_keeps_failures_and_averages_seeds():
    base = {"synthesizer": "dafl", "teacher": "lenet5", "student": "lenet5_half", "student_params": 10,
            "compression_ratio": 4.0, "device": "cpu", "teacher_acc": 0.98, "initial_student_acc": 0.1,
            "wall_time_s": 10, "fit_time_s": 9, "synthesis_time_s": 5, "images_synthesized": 100}
    rows = [{**base, "recipe": "a", "seed": 0, "status": "ok", "student_acc": 0.8, "student_over_teacher": 0.8 / 0.98,
             "stopped_by_budget": True},
            {**base, "recipe": "a", "seed": 1, "status": "ok", "student_acc": 0.9, "student_over_teacher": 0.9 / 0.98,
             "stopped_by_budget": False},
            {"recipe": "b", "seed": 0, "status": "failed (exit 2, see log)"}]
    a, b = aggregate(rows)
    assert a["runs"] == 2 and a["failed"] == 0 and a["stopped_by_budget"] == 1
    assert a["student_acc"][0] == pytest.approx(0.85)
    assert a["student_acc"][1] == pytest.approx(math.sqrt(0.005))
    assert b == {"recipe": "b", "runs": 0, "failed": 1, "why": "failed (1 runs, see logs/)"}


def test_a_run_the_chance_guard_stopped_is_reported_with_its_last_score(tmp_path):
    log, run_dir = tmp_path / "r.log", tmp_path / "run"
    run_dir.mkdir()
    for i, acc in ((40, 0.175), (80, 0.162), (120, 0.133)):
        append_curve(run_dir / "curve.csv", i, float(i), 0, {"tune": acc, "report": acc}, "epoch")
    log.write_text(f"...\nDivergenceError: {STILL_AT_CHANCE} (13.3 % on the tuning split) after 120 of ...\n")
    status = failure_status(1, log, run_dir)
    assert status == "stopped at chance (13.3 % on the tuning split at iteration 120)"
    log.write_text("Traceback ... CUDA out of memory\n")
    assert failure_status(1, log, run_dir) == "failed (exit 1, see log)"
    rows = [{"recipe": "ideal", "seed": 0, "status": status}]
    assert aggregate(rows)[0]["why"] == status
    rows.append({"recipe": "ideal", "seed": 1, "status": "failed (exit 1, see log)"})
    assert aggregate(rows)[0]["why"] == "failed (2 runs, see logs/)"


def test_time_to_deepinversions_final_accuracy_is_read_off_the_curves(tmp_path):
    curves = {"di_s0": [(100, 0.30), (200, 0.50), (300, 0.60)],      # DeepInversion ends at 60 % after 300 s
              "fast_s0": [(50, 0.40), (120, 0.61), (240, 0.70)],     # first at or above 60 % after 120 s
              "slow_s0": [(100, 0.20), (400, 0.55)]}                 # never reaches it
    for name, points in curves.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        for i, (t, acc) in enumerate(points):
            append_curve(tmp_path / "runs" / name / "curve.csv", i, t, 0, {"tune": acc, "report": acc}, "epoch")
    assert seconds_to_reach(read_curve(tmp_path / "runs" / "fast_s0" / "curve.csv"), 0.6) == 120
    rows = [{"recipe": "di", "synthesizer": "deepinversion", "seed": 0, "status": "ok", "student_acc": 0.6,
             "fit_time_s": 300.0},
            {"recipe": "fast", "synthesizer": "fastdfkd", "seed": 0, "status": "ok", "student_acc": 0.7},
            {"recipe": "slow", "synthesizer": "dafl", "seed": 0, "status": "ok", "student_acc": 0.55},
            {"recipe": "fast", "synthesizer": "fastdfkd", "seed": 1, "status": "ok", "student_acc": 0.7}]
    assert against_baseline(rows, tmp_path) == [
        "- seed 0: fast reaches di's final 60.0 % after 120 s of training, **0.40x** di's 300 s",
        "- seed 0: slow never reaches di's final 60.0 %"]


def test_describe_names_the_architecture_and_what_sets_its_size():
    assert describe({"arch": "resnet8", "arch_kwargs": {"width": 0.5}}) == "resnet8(width=0.5)"
    assert describe({"arch": "tucker", "arch_kwargs": {"base": "lenet5", "layers": ["conv2", "conv3"]}}) \
        == "tucker(lenet5: conv2, conv3)"
    convs = [f"layer{i}.conv" for i in range(19)]
    assert describe({"arch": "tucker", "arch_kwargs": {"base": "resnet20", "layers": convs}}) \
        == "tucker(resnet20: 19 convs)"


def test_embedded_recipes_are_the_cpu_distillation_recipes():
    names = embedded_recipes()
    assert {"deepinversion_resnet", "dafl_lenet", "kegnet_lenet", "zskt_wrn", "dfad_lenet",
            "fastdfkd_resnet"} <= set(names)
    assert not any(n.startswith("teacher_") or "cifar" in n or n.startswith("example_") for n in names)


@pytest.mark.slow
def test_time_budget_stops_the_run_and_exports_its_final_student(tmp_path, capsys):
    loop = [o for o in LOOP if not o.startswith(("distill.epochs=", "distill.iterations_per_epoch="))]
    run(tmp_path, "dafl_lenet", "run=b", *loop, *small("dafl_lenet"), "distill.epochs=50",
        "distill.iterations_per_epoch=20", "trainer.max_minutes=0.02")
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["stopped_by_budget"] is True and s["budget_minutes"] == 0.02
    assert 0 < s["iterations"] < s["planned_iterations"] == 1000
    assert s["fit_time_s_total"] >= 0.02 * 60
    assert "stopped by the time budget" in capsys.readouterr().out
    curve = read_curve(tmp_path / "b" / "curve.csv")
    assert curve[-1]["when"] == "final" and curve[-1]["iteration"] == s["iterations"]
    assert curve[-1]["report_acc"] == pytest.approx(s["student"]["report_acc"], abs=1e-4)
    # the exported student is the one that was scored, not the last end-of-epoch checkpoint
    from dfkd.data import embedded_mnist_splits

    val = torch.utils.data.Subset(embedded_mnist_splits().report, range(200))  # LOOP's data.limit_val
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        acc = (load_student(tmp_path / "b").eval()(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(s["student"]["report_acc"], abs=1e-6)


def test_a_tucker_run_keeps_its_recipe_and_records_the_ranks_it_chose_beside_it(tmp_path):
    """Builders return what they decided: a kegnet run's recipe.yaml is the recipe as composed (so `bench --resume`
    reads it back as the same run), and the ranks VBMF chose are in student_arch.yaml, what export rebuilds from."""
    from dfkd.runs.build import build_student
    from dfkd.runs.config import compose
    from dfkd.teachers.build import build_teacher

    cfg = compose("kegnet_lenet", run_args("kegnet_lenet", 0, tmp_path, None, []))
    built = build_student(cfg, build_teacher(cfg))
    assert "ranks" in built.arch_kwargs and "ranks" not in (cfg.student.arch_kwargs or {})
    assert set(built.arch_kwargs["ranks"]) == set(built.arch_kwargs["layers"])


def test_bench_command_writes_table_csv_and_plot(tmp_path, capfd):
    """`python -m dfkd.bench ...`, called in this process (each of its runs is a subprocess of its own)."""
    tiny = [*LOOP, "synthesizer.batch_size=8", "synthesizer.ngf=4"]  # valid for both generator methods
    args = ["dafl_lenet", "dfad_lenet", "--seeds", "3", "--minutes", "5", "--out", str(tmp_path / "bench"),
            "--set", *tiny]
    status = cli(args)
    out, err = capfd.readouterr()
    assert status == 0, out[-3000:] + err[-3000:]
    bench = tmp_path / "bench"
    with (bench / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["recipe"], r["seed"], r["status"]) for r in rows] == [("dafl_lenet", "3", "ok"),
                                                                     ("dfad_lenet", "3", "ok")]
    for r in rows:
        run = bench / "runs" / f"{r['recipe']}_s{r['seed']}"
        summary = json.loads((run / "summary.json").read_text())
        assert float(r["student_acc"]) == summary["student"]["report_acc"]
        assert int(r["images_synthesized"]) == summary["images_synthesized"] > 0
        assert summary["budget_minutes"] == 5.0 and summary["seed"] == int(r["seed"])
        assert len(read_curve(run / "curve.csv")) == 3  # two epochs and the final score
        assert "checkpoint: ${dfkd_teachers:}/lenet5_mnist.pt" in (run / "recipe.yaml").read_text()  # relocatable
        assert summary["teacher"]["checkpoint"] == "${dfkd_teachers:}/lenet5_mnist.pt"
    md = (bench / "results.md").read_text()
    assert "| dafl_lenet | dafl | lenet5 -> lenet5_half |" in md and "| dfad_lenet | dfad |" in md
    assert "Published results (for reference; not measured by dfkd)" in md
    table = (bench / "readme_table.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| `dafl_lenet` | lenet5 -> lenet5_half (3.9x) |")
    assert "seeds: 3" in md and "budget: 5 minutes" in md
    png = (bench / "accuracy_vs_time.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # --resume reads the finished runs back instead of running them again, but only those with the same settings
    summaries = {p: p.stat().st_mtime_ns for p in (bench / "runs").glob("*/summary.json")}
    status = cli(args + ["--resume"])
    out, err = capfd.readouterr()
    assert status == 0 and "--resume: 2 finished runs read back" in out, out + err
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries  # nothing ran again
    with (bench / "results.csv").open() as f:
        assert list(csv.DictReader(f)) == rows
    assert "2 of 2 runs were measured by an earlier command" in (bench / "results.md").read_text()
    assert finished_run("dafl_lenet", 3, bench, 5, tiny)["student_acc"] == float(rows[0]["student_acc"])
    assert finished_run("dafl_lenet", 3, bench, 6, tiny) is None  # another time budget
    assert finished_run("dafl_lenet", 3, bench, 5, [*tiny, "distill.tau=2"]) is None  # another setting
    assert finished_run("dafl_lenet", 4, bench, 5, tiny) is None  # never run


def test_bench_rejects_unknown_recipe(tmp_path, capsys):
    assert cli(["nope", "--out", str(tmp_path)]) == 2 and "unknown recipe" in capsys.readouterr().err


@pytest.mark.parametrize("method,variant", [("deepinversion", "fp32"), ("fastdfkd (Fast-2)", "fp32"),
                                            ("dafl", "bf16+channels_last")])
def test_throughput_measures_paper_scale_methods(method, variant):
    from dfkd.bench.throughput import measure

    row = measure(method, torch.device("cpu"), variant, synth_batch=2, kd_batch=2, calls=1, di_iters=1)
    assert row["synth_batch"] == 2 and row["kd_batch"] == 2
    assert row["synth_images_per_s"] > 0 and row["kd_steps_per_s"] > 0
    if method == "deepinversion":
        assert row["synth_note"] == "extrapolated from 1 of 2000 steps"
