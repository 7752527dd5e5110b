"""The student weight average (distill.ema_decay): the decay schedule and update by hand, and a run that scores
and exports it."""
import torch
import torch.nn as nn

import dfkd
from dfkd.loop.ema import ema_decay_at, student_average
from dfkd.runs.export import export_run
from tests.helpers import LOOP, load_ckpt, run, small


def test_decay_warms_up_then_holds():
    assert ema_decay_at(0.99, 0) == 1 / 10
    assert ema_decay_at(0.99, 8) == 9 / 18
    assert ema_decay_at(0.99, 10_000) == 0.99


def test_update_matches_hand_computation():
    model = nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.running_mean.fill_(2.0)
    average = student_average(model, decay=0.9)
    assert not any(p.requires_grad for p in average.parameters()) and not average.training
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.running_mean.fill_(4.0)
        model.num_batches_tracked.fill_(7)
    average.update_parameters(model)              # update 0 copies the model
    torch.testing.assert_close(average.module.weight, torch.full((2,), 1.0))
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(0.0)
        model.num_batches_tracked.fill_(9)
    average.update_parameters(model)              # update 1: d = min(0.9, 2/11)
    d = 2 / 11
    torch.testing.assert_close(average.module.weight, torch.full((2,), d * 1.0 + (1 - d) * 3.0))
    torch.testing.assert_close(average.module.running_mean, torch.full((2,), d * 4.0 + (1 - d) * 0.0))
    assert average.module.num_batches_tracked.item() == 9  # integer buffers are copied
    assert int(average.n_averaged) == 2


def test_run_scores_and_exports_the_weight_average(tmp_path):
    summary = run(tmp_path, "dafl_lenet", "run=ema", *LOOP, *small("dafl_lenet"), "distill.ema_decay=0.9")
    path = tmp_path / "ema"
    sd = load_ckpt(path / "last.ckpt")["state_dict"]
    prefix = "student_ema.module.model."
    average = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    raw = {k[len("student.model."):]: v for k, v in sd.items() if k.startswith("student.model.")}
    assert average.keys() == raw.keys() and any(not torch.equal(average[k], raw[k]) for k in raw)
    assert int(sd["student_ema.n_averaged"]) == 4  # one update per iteration, checkpointed for resume
    exported = dfkd.load_student(path).model.state_dict()
    for k, v in average.items():
        torch.testing.assert_close(exported[k], v)
    # the command-line export from the checkpoint picks the average too
    (path / "student.pt").unlink()
    export_run(path, "last")
    for k, v in average.items():
        torch.testing.assert_close(dfkd.load_student(path).model.state_dict()[k], v)
    assert 0 <= summary["student"]["report_acc"] <= 1
    assert "distill.ema_decay=0.9" in summary["student"]["weights"]
