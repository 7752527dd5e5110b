"""Runs of the recipes: every embedded recipe for a few iterations (in-process), every paper-scale recipe built
(compose, every part, one forward), one real command-line run and DDP runs (subprocesses, as a user runs them),
and the run-level error paths. Budgets are tiny: these check wiring, state, files and a falling KD loss, not
accuracy (tests/test_learning.py)."""
import json

import pytest
import torch

from dfkd.data import image_shape
from dfkd.errors import DfkdError, RunError
from dfkd.runs.build import build_student, build_synthesizer
from dfkd.runs.config import compose
from dfkd.runs.run import main
from dfkd.synthesizers import SynthContext
from dfkd.teachers.build import build_teacher
from tests.helpers import (FAKE, LOOP, SMOKE_KD_STEPS, check_kd_loss_fell, check_run_folder, distill_recipes,
                           embedded_distill_recipes, load_ckpt, run, small, train)

PAPER_SCALE = sorted(set(distill_recipes()) - set(embedded_distill_recipes()))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", embedded_distill_recipes())
def test_every_embedded_recipe_runs_a_smoke_step(tmp_path, recipe, kd_losses):
    """Files, state and a KD loss that fell (accuracy margins need more than 4 iterations: tests/test_learning.py
    and the own-teacher command-line run assert them). Without the tier's augmentation: its random affine moves the
    loss of 4 steps more than they lower it (CMI and DAFL failed the check with it, either way at 4 and 6 steps);
    the augmentation itself runs in every other run of this file and in the CIFAR-10 tier's smoke steps."""
    run(tmp_path, recipe, "run=smoke", *LOOP, *small(recipe), *SMOKE_KD_STEPS, "augment=[]")
    check_run_folder(tmp_path / "smoke")
    check_kd_loss_fell(kd_losses, recipe)


@pytest.mark.parametrize("recipe", PAPER_SCALE)
def test_every_paper_scale_recipe_builds_every_part(recipe):
    """Paper-scale recipes on FakeData with a random teacher: teacher, student and synthesizer build, the
    synthesizer attaches, and teacher and student take a batch of the data's images."""
    cfg = compose(recipe, FAKE)
    teacher = build_teacher(cfg)
    student = build_student(cfg, teacher).classifier
    synthesizer = build_synthesizer(cfg, teacher)
    d = cfg.data
    synthesizer.attach(teacher, student, SynthContext(int(d.num_classes), image_shape(d), tuple(d.mean),
                                                      tuple(d.std), torch.device("cpu")))
    x = torch.rand(2, *image_shape(d))
    with torch.no_grad():
        assert teacher(x).shape == student.eval()(x).shape == (2, d.num_classes)
    synthesizer.detach()


@pytest.mark.slow
def test_a_plugin_recipe_runs_from_the_command_line(tmp_path):
    """The user's command, end to end, with a synthesizer registered from outside the package."""
    out = train(tmp_path, "example_noise_resnet", "run=cli", *LOOP, *small("example_noise_resnet"))
    s = check_run_folder(tmp_path / "cli")
    assert s["synthesizer"] == "noise" and "student report acc" in out.stdout
    # one line says what the run is; nothing that dfkd's design makes expected is warned about before the bar
    assert "dfkd: recipe example_noise_resnet | teacher resnet8" in out.stdout
    before_bar = out.stderr.split("distill:")[0]
    assert "warn" not in before_bar.lower() and "Tip" not in before_bar, before_bar


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["deepinversion_resnet", "dafl_lenet", "fastdfkd_resnet",
                                    "cmi_resnet", "nayer_resnet"])  # the last three set gradients by hand
def test_two_process_ddp_ranks_differ_in_noise_and_agree_on_weights(tmp_path, recipe):
    train(tmp_path, recipe, "run=ddp", *LOOP, *small(recipe), "trainer.devices=2", "trainer.strategy=auto")
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


def test_a_teacher_recipe_writes_into_its_run_folder_and_never_over_a_shipped_teacher(tmp_path):
    from dfkd.resources import TEACHERS_DIR

    shipped = (TEACHERS_DIR / "lenet5_mnist.pt").read_bytes()
    s = run(tmp_path, "teacher_lenet5_mnist", "run=mine", "train.epochs=1", "trainer.accelerator=cpu",
            "teacher.mean=[0.5]", "teacher.std=[0.5]")
    assert (TEACHERS_DIR / "lenet5_mnist.pt").read_bytes() == shipped
    assert s["output"] == str(tmp_path / "mine" / "teacher.pt") and s["report_acc"] > 0.5
    saved = load_ckpt(tmp_path / "mine" / "teacher.pt")  # trained with the teacher's own normalization
    assert saved["mean"] == [0.5] and saved["std"] == [0.5]
    teacher = build_teacher(compose("dfad_lenet", [f"teacher.checkpoint={tmp_path}/mine/teacher.pt"]))
    assert teacher(torch.rand(2, 1, 28, 28)).shape == (2, 10)


# -- errors: clear, and nothing lost ------------------------------------------------------------------

def cfg_for(tmp_path, *overrides):
    return compose("deepinversion_resnet", [f"paths.runs={tmp_path}", *LOOP, *small("deepinversion_resnet"),
                                            "distill.epochs=1", *overrides])


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(RunError, match="nothing to resume"):
        main(cfg_for(tmp_path, "run=nothing", "resume=true"))


def test_missing_teacher_checkpoint_names_the_recipe_that_makes_it(tmp_path):
    with pytest.raises(RunError, match=r"not found.*recipe=teacher_resnet8_mnist"):
        main(cfg_for(tmp_path, f"teacher.checkpoint={tmp_path}/nope.pt"))


def test_corrupt_teacher_checkpoint_is_reported_without_inviting_unsafe_loading(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DfkdError, match="teacher checkpoint .*bad.pt cannot be read.*truncated or corrupt") as e:
        main(cfg_for(tmp_path, f"teacher.checkpoint={bad}"))
    assert "weights_only" not in str(e.value)
    pickled = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module, not a state_dict
    with pytest.raises(DfkdError, match="other than tensors.*state_dict") as e:
        main(cfg_for(tmp_path, f"teacher.checkpoint={pickled}"))
    assert "weights_only=False" not in str(e.value)


def test_teacher_that_does_not_fit_the_arch_is_reported(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        main(cfg_for(tmp_path, "teacher.arch=resnet20"))


def test_teacher_class_count_mismatch_is_reported(tmp_path):
    with pytest.raises((RunError, ValueError), match="num_classes|classes"):
        main(cfg_for(tmp_path, "data.num_classes=7"))


def test_teacher_without_batchnorm_is_refused_for_deepinversion(tmp_path):
    with pytest.raises(RunError, match="no BatchNorm.*dafl"):  # names the methods that fit
        main(cfg_for(tmp_path, "teacher.arch=lenet5", "teacher.checkpoint=null", "teacher.random_init=true",
                     "teacher.input_size=32"))


def test_run_folder_of_another_recipe_is_not_clobbered(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "recipe.yaml").write_text("recipe: teacher_resnet8_mnist\n")
    (tmp_path / "taken" / "last.ckpt").write_bytes(b"a checkpoint")
    with pytest.raises(RunError, match="already holds a run of recipe 'teacher_resnet8_mnist'"):
        main(cfg_for(tmp_path, "run=taken"))
    assert (tmp_path / "taken" / "recipe.yaml").read_text() == "recipe: teacher_resnet8_mnist\n"
    assert (tmp_path / "taken" / "last.ckpt").read_bytes() == b"a checkpoint"


@pytest.mark.parametrize("recipe, teacher_calls_per_iteration", [("zskt_wrn", 1 + 1), ("dfad_lenet", 1 + 3)])
def test_teacher_scores_a_repeated_pseudo_batch_once(tmp_path, monkeypatch, recipe, teacher_calls_per_iteration):
    """ZSKT takes kd_steps student steps on one pseudo-batch: the frozen teacher's logits are computed once per
    pseudo-batch (plus the synthesizer's own call); DFAD draws fresh images for every step, so it scores each."""
    import dfkd.loop.module as distill

    calls = []
    fit_start = distill.DistillModule.on_fit_start

    def counting(self):
        fit_start(self)
        self.teacher.register_forward_hook(lambda m, i, o: calls.append(self.iteration) if self.training else None)

    monkeypatch.setattr(distill.DistillModule, "on_fit_start", counting)
    # un-augmented, as ZSKT's paper: augmentation makes every step's batch new (the tier's protocol augments)
    cfg = compose(recipe, [f"paths.runs={tmp_path}", "run=cached", *LOOP, *small(recipe), "distill.kd_steps=3",
                           "augment=[]"])
    main(cfg)
    assert len(calls) == 4 * teacher_calls_per_iteration
    assert sorted(set(calls)) == [0, 1, 2, 3]


def test_replay_memory_keeps_the_latest_images_with_the_teachers_logits(tmp_path, monkeypatch):
    """`distill.replay`: each KD batch is half fresh images, half replayed ones with their stored teacher logits."""
    import dfkd.loop.module as distill
    from dfkd.loop.kd_batches import KDBatchSource

    fresh, batches = [], []  # each KD step's fresh batch, and what the student was trained on
    fit_start, draw = distill.DistillModule.on_fit_start, KDBatchSource._draw

    def recording(self):
        fit_start(self)
        self.student.register_forward_hook(lambda m, i, o: batches.append(i[0].detach()) if m.training else None)

    def recording_draw(self, synthesizer):
        x = draw(self, synthesizer)
        fresh.append(x.detach())
        return x

    monkeypatch.setattr(distill.DistillModule, "on_fit_start", recording)
    monkeypatch.setattr(KDBatchSource, "_draw", recording_draw)
    cfg = compose("zskt_wrn", [f"paths.runs={tmp_path}", "run=replay", *LOOP, *small("zskt_wrn"), "distill.kd_steps=2",
                               "distill.replay.capacity=12", "distill.replay.fraction=0.25", "augment=[]"])
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


def test_replay_fraction_outside_0_1_closed_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="replay.fraction"):
        main(compose("zskt_wrn", [f"paths.runs={tmp_path}", *LOOP, *small("zskt_wrn"),
                                  "distill.replay.capacity=12", "distill.replay.fraction=1.5"]))
