"""Nothing a user does loses data, and every mistake ends in one message that names the problem and the fix:
wrong values, corrupt checkpoints, resumes that do not match their run, unwritable folders, divergence. Where the
console is the point, through the command line as a user runs it."""
import hashlib

import pytest
import torch

from dfkd.runs.config import ConfigError, compose
from dfkd.errors import DfkdError
from dfkd.runs.export import export_run
from dfkd.errors import RunError
from tests.helpers import LOOP, command, load_ckpt, run, small, train

TINY = [*LOOP, *small("deepinversion_resnet")]


def digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (2 epochs of 2 iterations), to resume, corrupt and export."""
    runs = tmp_path_factory.mktemp("runs")
    run(runs, "deepinversion_resnet", "run=done", *TINY)
    return runs, runs / "done"


def test_a_wrong_value_is_one_message_and_debug_shows_the_traceback(tmp_path, capfd):
    status, _, err = command(tmp_path, "deepinversion_resnet", "distill.epochs=abc", capture=capfd)
    assert status == 2 and "Traceback" not in err
    assert "distill.epochs=abc: expected a whole number" in err
    debug = train(tmp_path, "deepinversion_resnet", "synthesizer.lr=fast", "--debug", check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "synthesizer.lr=fast" in debug.stderr
    assert not (tmp_path / "deepinversion_resnet").exists()


def test_a_run_without_its_data_path_names_the_key_to_set(tmp_path, capsys):
    """A recipe may leave data.root to the user (`???`); the run stops with the override to type, not a traceback."""
    from dfkd.runs.cli import main as cli_main

    assert cli_main(["recipe=fastdfkd_cifar10", f"paths.runs={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "error: recipe 'fastdfkd_cifar10' needs data.root" in err and "add data.root=PATH" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("override, says", [("synthesizer.lr=fast", "expected a number"),
                                            ("bank.enabled=maybe", "expected true or false"),
                                            ("augment=3", "expected a list"), ("resume=yes", "resume=best")])
def test_values_are_checked_against_the_declared_types(override, says):
    with pytest.raises(ConfigError, match=says):
        compose("deepinversion_resnet", [override])
    compose("deepinversion_resnet", ["synthesizer.lr=1", "distill.tau=4", "trainer.devices=auto"])  # fine


def test_devices_given_as_a_word_run(tmp_path):
    s = run(tmp_path, "deepinversion_resnet", "run=auto", *TINY, "distill.epochs=1", "trainer.devices=auto")
    assert s["world_size"] == 1


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    with pytest.raises(RunError, match="no BatchNorm"):
        run(tmp_path, "deepinversion_resnet", "run=nobn", *TINY, "teacher.arch=lenet5", "teacher.checkpoint=null",
            "teacher.random_init=true", "teacher.input_size=32")
    assert not (tmp_path / "nobn").exists()


def test_a_folder_without_checkpoint_is_not_a_run(tmp_path):
    (tmp_path / "died").mkdir()
    (tmp_path / "died" / "recipe.yaml").write_text("recipe: deepinversion_resnet\n")  # died before epoch 1
    with pytest.raises(RunError, match="nothing to resume"):
        run(tmp_path, "deepinversion_resnet", "run=died", *TINY, "resume=true")
    run(tmp_path, "deepinversion_resnet", "run=died", *TINY, "distill.epochs=1")  # a plain re-run just works
    assert (tmp_path / "died" / "last.ckpt").is_file()


def test_a_resume_with_other_settings_is_refused_and_changes_nothing(finished):
    runs, folder = finished
    before = digest(folder)
    with pytest.raises(RunError, match=r"distill.optimizer.lr: the run has 0.002, this command 0.5(.|\n)*"
                                       r"student.arch_kwargs.width"):
        run(runs, "deepinversion_resnet", "run=done", *TINY, "resume=true", "distill.optimizer.lr=0.5",
            "student.arch_kwargs.width=0.25")
    with pytest.raises(RunError, match="written by 1 processes.*trainer.devices=1"):
        run(runs, "deepinversion_resnet", "run=done", *TINY, "resume=true", "trainer.devices=2")
    assert digest(folder) == before
    export_run(folder)  # the folder is still a good run


def test_a_corrupt_last_checkpoint_names_the_intact_one_and_resume_best_uses_it(finished, tmp_path, capfd):
    runs, folder = finished
    work = tmp_path / "copy"
    work.mkdir()
    for p in folder.iterdir():
        if p.is_file():
            (work / p.name).write_bytes(p.read_bytes())
    (work / "last.ckpt").write_bytes((work / "last.ckpt").read_bytes()[:5000])  # a write cut short
    before = digest(work)
    status, _, err = command(tmp_path, "deepinversion_resnet", "run=copy", *TINY, "resume=true", "distill.epochs=3",
                             capture=capfd)
    assert status == 2 and "Traceback" not in err, err[-2000:]
    assert "cannot be read" in err and "resume=best" in err and "weights_only" not in err
    assert digest(work) == before
    with pytest.raises(DfkdError, match="--ckpt best"):  # export names the intact checkpoint too
        export_run(work, "last")


def test_resume_best_continues_and_the_progress_bar_starts_where_it_stopped(tmp_path, capfd):
    # a finished run whose accuracy peaked before its end: best.ckpt from iteration 2, last.ckpt from iteration 4.
    # Made by hand rather than left to the curve of a tiny run, which may as well peak at its last evaluation.
    killed = train(tmp_path, "deepinversion_resnet", "run=done", *TINY, "debug.kill_at_iteration=3", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    folder = tmp_path / "done"
    at_two = (folder / "last.ckpt").read_bytes()
    assert command(tmp_path, "deepinversion_resnet", "run=done", *TINY, "resume=true", capture=capfd)[0] == 0
    assert load_ckpt(folder / "last.ckpt")["dfkd"]["iteration"] == 4
    (folder / "best.ckpt").write_bytes(at_two)
    assert load_ckpt(folder / "best.ckpt")["dfkd"]["iteration"] == 2

    status, _, err = command(tmp_path, "deepinversion_resnet", "run=done", *TINY, "resume=best", "distill.epochs=3",
                             capture=capfd)
    assert status == 2 and "distill.epochs" in err  # a longer schedule is another run ...
    status, out, err = command(tmp_path, "deepinversion_resnet", "run=done", *TINY, "resume=best", capture=capfd)
    # ... a resume picks up where best.ckpt stopped: its bar starts there and ends at the run's end
    assert status == 0 and "2/4" in err and "4/4" in err and "0/4" not in err, err
    assert "resuming from best.ckpt" in out


def test_an_unwritable_runs_folder_is_reported_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match=f"cannot write the run folder {blocker}/x.*paths.runs="):
        run(blocker, "deepinversion_resnet", "run=x", *TINY)


def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import dfkd.runs.trainer

    real, calls = torch.save, []

    def disk_full_after_the_first_epoch(obj, path, *a, **k):
        calls.append(path)
        if len(calls) > 2:  # epoch 1 wrote last and best; epoch 2's first write fills the disk half-way
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 the first bytes of a checkpoint")
            raise OSError(28, "No space left on device")
        return real(obj, path, *a, **k)

    monkeypatch.setattr(dfkd.runs.trainer.torch, "save", disk_full_after_the_first_epoch)
    with pytest.raises(RunError, match="No space left on device; the previous checkpoint is intact"):
        run(tmp_path, "deepinversion_resnet", "run=full", *TINY)
    assert load_ckpt(tmp_path / "full" / "last.ckpt")["dfkd"]["iteration"] == 2
    assert not list((tmp_path / "full").glob("*.tmp"))


def _poison(monkeypatch, after: int):
    import dfkd.loop.module as distill

    calls, real = {"n": 0}, distill.KD_LOSSES["kl"]

    def poisoned(s, t, tau):
        calls["n"] += 1
        return real(s, t, tau) * (float("nan") if calls["n"] > after else 1.0)

    monkeypatch.setitem(distill.KD_LOSSES, "kl", poisoned)


def test_a_diverging_student_names_its_learning_rate_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    from dfkd.errors import DivergenceError

    _poison(monkeypatch, after=2)
    with pytest.raises(DivergenceError, match=r"KD loss became nan at iteration 2(.|\n)*distill.optimizer.lr=0.002"
                                              r"(.|\n)*last.ckpt \(iteration 2\) is the last good checkpoint"):
        run(tmp_path, "deepinversion_resnet", "run=nan", *TINY)
    ck = load_ckpt(tmp_path / "nan" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_a_diverging_synthesizer_names_its_learning_rate(tmp_path, monkeypatch):
    from dfkd.errors import DivergenceError
    from dfkd.synthesizers.dafl import DAFL

    real = DAFL.synthesize

    def blown_up(self):
        batch = real(self)
        batch.images = batch.images * float("inf")
        return batch

    monkeypatch.setattr(DAFL, "synthesize", blown_up)
    with pytest.raises(DivergenceError, match=r"synthesized images became non-finite(.|\n)*synthesizer.lr=0.01"
                                              r"(.|\n)*no checkpoint had been written"):
        run(tmp_path, "dafl_lenet", "run=g", *LOOP, *small("dafl_lenet"))


def test_diverged_weights_never_reach_a_checkpoint(tmp_path, monkeypatch):
    """One iteration per epoch: the step that blows the weights up is followed by a checkpoint, not a loss."""
    import dfkd.loop.module as distill
    from dfkd.errors import DivergenceError

    real = distill.DistillModule._distill

    def blows_up(self):
        loss = real(self)
        if self.iteration == 1:
            with torch.no_grad():
                next(self.student.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(distill.DistillModule, "_distill", blows_up)
    with pytest.raises(DivergenceError, match="the student's weights became non-finite"):
        run(tmp_path, "deepinversion_resnet", "run=w", *TINY, "distill.iterations_per_epoch=1")
    ck = load_ckpt(tmp_path / "w" / "last.ckpt")  # epoch 1's, from before the blow-up; best.ckpt likewise
    assert ck["dfkd"]["iteration"] == 1 and load_ckpt(tmp_path / "w" / "best.ckpt")["dfkd"]["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def test_a_student_still_at_chance_stops_the_run_naming_both_learning_rates(tmp_path):
    """DAFL with an absurd generator learning rate: the images stay finite, and carry nothing."""
    from dfkd.errors import DivergenceError

    loop = [o for o in LOOP if not o.startswith("distill.stop_at_chance_after")]
    with pytest.raises(DivergenceError, match=r"still at chance \(\d+\.\d %(.|\n)*synthesizer.lr=1000(.|\n)*"
                                              r"distill.optimizer.lr=0.002"):
        run(tmp_path, "dafl_lenet", "run=chance", *loop, *small("dafl_lenet"), "synthesizer.lr=1000",
            "distill.iterations_per_epoch=50")  # judged after 100 student steps
    assert not (tmp_path / "chance" / "student.pt").exists()
