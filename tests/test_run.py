"""End-to-end runs through `train.py` (subprocesses, as a user runs them) and the run-level error paths
(in-process). Budgets are tiny: these check wiring, state and files, not accuracy."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dfkd
from dfkd.config import compose, list_recipes
from dfkd.run import RunError, build_teacher, main

ROOT = Path(__file__).resolve().parents[1]
LOOP = ["distill.epochs=2", "distill.iterations_per_epoch=2", "distill.synth_every=1", "distill.kd_steps=1",
        "distill.batch_size=8", "bank.capacity=64", "trainer.accelerator=cpu", "log.image_every=1"]
SMALL = {  # per synthesizer: the smallest settings that still run every code path
    "deepinversion": ["synthesizer.batch_size=8", "synthesizer.iterations=2"],
    "dafl": ["synthesizer.batch_size=8", "synthesizer.ngf=4"],
    "dfad": ["synthesizer.batch_size=8", "synthesizer.ngf=4"],
    "zskt": ["synthesizer.batch_size=8", "synthesizer.ngf=4"],
    "fastdfkd": ["synthesizer.batch_size=8", "synthesizer.ngf=4", "synthesizer.g_steps=2", "synthesizer.warmup=1",
                 "synthesizer.reset_l0_at=2"],
    "kegnet": ["synthesizer.batch_size=8", "synthesizer.generators=2"],
    "noise": ["synthesizer.batch_size=8"],   # examples/noise_synthesizer.py, a plug-in from outside the package
}
TINY = LOOP + SMALL["deepinversion"]
# paper-scale recipes run on FakeData with a random teacher
FAKE = ["data=fake", "teacher.checkpoint=null", "teacher.random_init=true", "data.image_size=32"]


def train(tmp_path, recipe, *overrides, check=True):
    cmd = [sys.executable, str(ROOT / "train.py"), f"recipe={recipe}", f"paths.runs={tmp_path}", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def distill_recipes():
    return [r for r in list_recipes() if compose(r).task == "distill"]


def load_ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", distill_recipes())
def test_every_distill_recipe_runs_a_smoke_step(tmp_path, recipe):
    cfg = compose(recipe)
    extra = FAKE if cfg.data.name != "mnist_embedded" else []
    warm = ["distill.warmup_iterations=1"] if cfg.distill.get("warmup_iterations") else []
    train(tmp_path, recipe, "run=smoke", *LOOP, *SMALL[cfg.synthesizer.name], *extra, *warm)
    run = tmp_path / "smoke"
    for name in ("last.ckpt", "best.ckpt", "recipe.yaml", "summary.json", "student.pt", "samples.png"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    s = json.loads((run / "summary.json").read_text())
    assert s["images_synthesized"] >= 2 * 2 * 8 and s["iterations"] == 4
    assert 0 <= s["student"]["heldout_acc"] <= 1 and s["synthesis_time_s"] > 0
    assert {"torch", "pytorch_lightning", "timm", "kornia"} <= set(s["versions"])
    student = dfkd.load_student(run / "student.pt")
    c, h = (1, 28) if not extra else (3, 32)
    assert student(torch.rand(2, c, h, h)).shape == (2, 10)


RESUMABLE = ["deepinversion_resnet", "dafl_lenet", "kegnet_lenet", "fastdfkd_resnet", "zskt_wrn"]
REPLAY = "++distill.replay={capacity:12,fraction:0.5}"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RESUMABLE)
def test_killed_run_resumes_to_the_same_state_as_an_uninterrupted_one(tmp_path, recipe):
    name = compose(recipe).synthesizer.name
    budget = [*LOOP, *SMALL[name], "distill.epochs=3", "trainer.deterministic=true"]
    if name == "fastdfkd":  # the warm-up switch and the re-initialization fall after the resume point
        budget += ["synthesizer.warmup=3", "synthesizer.reset_l0_at=5"]
    if name == "zskt":  # with a replay memory, which must come back whole
        budget += [REPLAY, "distill.kd_steps=2"]
    train(tmp_path, recipe, "run=straight", *budget)
    killed = train(tmp_path, recipe, "run=crash", *budget, "debug.kill_at_iteration=3", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    mid = load_ckpt(tmp_path / "crash" / "last.ckpt")
    assert mid["dfkd"]["iteration"] == 2 and not (tmp_path / "crash" / "summary.json").exists()
    train(tmp_path, recipe, "run=crash", *budget, "resume=true")

    a, b = load_ckpt(tmp_path / "straight" / "last.ckpt"), load_ckpt(tmp_path / "crash" / "last.ckpt")
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["dfkd"]["iteration"] == b["dfkd"]["iteration"] == 6
    assert set(a["state_dict"]) == set(b["state_dict"])
    # student, generators, decoders (every parameter and buffer of the module)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=f"{k} differs")
    ra, rb = a["dfkd"]["per_rank"][0], b["dfkd"]["per_rank"][0]
    if ra["bank"]["images"] is not None:
        assert torch.equal(ra["bank"]["images"], rb["bank"]["images"]), "resumed run synthesized different images"
    if ra.get("replay") is not None:
        assert ra["replay"]["size"] == rb["replay"]["size"] == 12
        assert torch.equal(ra["replay"]["images"], rb["replay"]["images"])
        torch.testing.assert_close(rb["replay"]["targets"], ra["replay"]["targets"])
    assert ra["images_synthesized"] == rb["images_synthesized"]
    for key in ("calls", "bn_ema"):  # synthesizer counters and EMA statistics (FastDFKD)
        if key in ra["synth"]:
            torch.testing.assert_close(rb["synth"][key], ra["synth"][key])
    assert len(a["optimizer_states"]) == len(b["optimizer_states"]) == 1 + len(a["optimizer_states"][1:])
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for pid, st in sa["state"].items():
            for key, v in st.items():
                torch.testing.assert_close(sb["state"][pid][key], v, rtol=1e-5, atol=1e-6)
    assert [s["last_epoch"] for s in a["lr_schedulers"]] == [s["last_epoch"] for s in b["lr_schedulers"]]
    assert json.loads((tmp_path / "crash" / "summary.json").read_text())["resumed"] is True


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["deepinversion_resnet", "dafl_lenet", "fastdfkd_resnet"])
def test_two_process_ddp_ranks_differ_in_noise_and_agree_on_weights(tmp_path, recipe):
    name = compose(recipe).synthesizer.name
    extra = ["synthesizer.warmup=1", "synthesizer.reset_l0_at=3"] if name == "fastdfkd" else []
    train(tmp_path, recipe, "run=ddp", *LOOP, *SMALL[name], *extra, "trainer.devices=2", "trainer.strategy=auto")
    ck = load_ckpt(tmp_path / "ddp" / "last.ckpt")
    r0, r1 = ck["dfkd"]["per_rank"]
    assert not torch.equal(r0["synth"]["rng"], r1["synth"]["rng"]), "ranks share one noise stream"
    if r0["bank"]["images"] is not None:
        assert not torch.equal(r0["bank"]["images"], r1["bank"]["images"]), "ranks synthesized identical images"
    # gradients are synchronized: every rank holds the same student and the same generator
    torch.testing.assert_close(r0["student_fingerprint"], r1["student_fingerprint"], rtol=0, atol=0)
    torch.testing.assert_close(r0["synth_fingerprint"], r1["synth_fingerprint"], rtol=1e-6, atol=1e-8)
    s = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["images_synthesized"] > 0


# -- errors: clear, and nothing lost ------------------------------------------------------------------

def cfg_for(tmp_path, *overrides):
    return compose("deepinversion_resnet", [f"paths.runs={tmp_path}", *TINY, "distill.epochs=1", *overrides])


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(RunError, match="nothing to resume"):
        main(cfg_for(tmp_path, "run=nothing", "resume=true"))


def test_missing_teacher_checkpoint_names_the_recipe_that_makes_it(tmp_path):
    with pytest.raises(RunError, match=r"not found.*recipe=teacher_resnet8_mnist"):
        main(cfg_for(tmp_path, f"teacher.checkpoint={tmp_path}/nope.pt"))


def test_corrupt_teacher_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        main(cfg_for(tmp_path, f"teacher.checkpoint={bad}"))


def test_teacher_that_does_not_fit_the_arch_is_reported(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        main(cfg_for(tmp_path, "teacher.arch=resnet20"))


def test_teacher_class_count_mismatch_is_reported(tmp_path):
    with pytest.raises((RunError, ValueError), match="num_classes|classes"):
        main(cfg_for(tmp_path, "data.num_classes=7"))


def test_teacher_without_batchnorm_is_refused_for_deepinversion(tmp_path):
    with pytest.raises(RunError, match="no BatchNorm"):
        main(cfg_for(tmp_path, "teacher.arch=lenet5", "teacher.checkpoint=null", "teacher.random_init=true",
                     "teacher.input_size=32"))


def test_run_folder_of_another_recipe_is_not_clobbered(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "recipe.yaml").write_text("recipe: teacher_resnet8_mnist\n")
    with pytest.raises(RunError, match="already holds a run of recipe 'teacher_resnet8_mnist'"):
        main(cfg_for(tmp_path, "run=taken"))
    assert (tmp_path / "taken" / "recipe.yaml").read_text() == "recipe: teacher_resnet8_mnist\n"


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import dfkd.distill as distill

    calls = {"n": 0}
    real = distill.KD_LOSSES["kl"]

    def poisoned(s, t, tau):
        calls["n"] += 1
        loss = real(s, t, tau)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setitem(distill.KD_LOSSES, "kl", poisoned)
    with pytest.raises(distill.DivergenceError, match="KD loss became nan"):
        main(cfg_for(tmp_path, "run=nan", "distill.epochs=2"))
    ck = load_ckpt(tmp_path / "nan" / "last.ckpt")
    assert ck["dfkd"]["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("recipe, teacher_calls_per_iteration", [("zskt_wrn", 1 + 1), ("dfad_lenet", 1 + 3)])
def test_teacher_scores_a_repeated_pseudo_batch_once(tmp_path, monkeypatch, recipe, teacher_calls_per_iteration):
    """ZSKT takes kd_steps student steps on one pseudo-batch: the frozen teacher's logits are computed once per
    pseudo-batch (plus the synthesizer's own call); DFAD draws fresh images for every step, so it scores each."""
    import dfkd.distill as distill

    calls = []
    fit_start = distill.DistillModule.on_fit_start

    def counting(self):
        fit_start(self)
        self.teacher.register_forward_hook(lambda m, i, o: calls.append(self.iteration) if self.training else None)

    monkeypatch.setattr(distill.DistillModule, "on_fit_start", counting)
    name = compose(recipe).synthesizer.name
    cfg = compose(recipe, [f"paths.runs={tmp_path}", "run=cached", *LOOP, *SMALL[name], "distill.kd_steps=3"])
    main(cfg)
    assert len(calls) == 4 * teacher_calls_per_iteration
    assert sorted(set(calls)) == [0, 1, 2, 3]


def test_replay_memory_keeps_the_latest_images_with_the_teachers_logits(tmp_path, monkeypatch):
    """`distill.replay`: each KD batch is half fresh images, half replayed ones with their stored teacher logits."""
    import dfkd.distill as distill

    fresh, batches = [], []  # each KD step's fresh batch, and what the student was trained on
    fit_start, kd_batch = distill.DistillModule.on_fit_start, distill.DistillModule._kd_batch

    def recording(self):
        fit_start(self)
        self.student.register_forward_hook(lambda m, i, o: batches.append(i[0].detach()) if m.training else None)

    def recording_kd_batch(self):
        x = kd_batch(self)
        fresh.append(x.detach())
        return x

    monkeypatch.setattr(distill.DistillModule, "on_fit_start", recording)
    monkeypatch.setattr(distill.DistillModule, "_kd_batch", recording_kd_batch)
    cfg = compose("zskt_wrn", [f"paths.runs={tmp_path}", "run=replay", *LOOP, *SMALL["zskt"], "distill.kd_steps=2",
                               "++distill.replay={capacity:12,fraction:0.25}"])
    main(cfg)
    memory = load_ckpt(tmp_path / "replay" / "last.ckpt")["dfkd"]["per_rank"][0]["replay"]
    assert memory["size"] == 12 and memory["added"] == 4 * 8   # 4 pseudo-batches of 8 went through 12 slots
    assert memory["targets"].shape == (12, 10)
    with torch.no_grad():                                       # the stored logits are the teacher's
        torch.testing.assert_close(build_teacher(cfg)(memory["images"]), memory["targets"], rtol=1e-4, atol=1e-4)
    assert len(batches) == len(fresh) == 4 * 2
    assert all(b.shape[0] == 8 for b in batches)               # KD batches keep their size ...
    from_fresh = [sum(bool((f == row).flatten(1).all(1).any()) for row in b) for f, b in zip(fresh, batches)]
    assert from_fresh == [8, 8] + [6] * 6                      # ... 6 fresh + 2 replayed once the memory holds any


def test_replay_fraction_outside_0_1_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="replay.fraction"):
        main(compose("zskt_wrn", [f"paths.runs={tmp_path}", *LOOP, *SMALL["zskt"],
                                  "++distill.replay={capacity:12,fraction:1.0}"]))
