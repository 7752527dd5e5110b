"""The student weight average (distill.ema_decay): the update by hand, and a run that scores and exports it."""
import torch
import torch.nn as nn

import dfkd
from dfkd.config import compose
from dfkd.ema import ema_decay_at, ema_update
from dfkd.export import export_run
from dfkd.run import main
from tests.test_run import LOOP, SMALL, load_ckpt


def test_decay_warms_up_then_holds():
    assert ema_decay_at(0.99, 0) == 1 / 10
    assert ema_decay_at(0.99, 8) == 9 / 18
    assert ema_decay_at(0.99, 10_000) == 0.99


def test_update_matches_hand_computation():
    average, model = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        average.weight.fill_(0.0)
        model.weight.fill_(1.0)
        average.running_mean.fill_(2.0)
        model.running_mean.fill_(4.0)
        model.num_batches_tracked.fill_(7)
    ema_update(average, model, decay=0.9, n=0)      # d = min(0.9, 1/10) = 0.1
    torch.testing.assert_close(average.weight, torch.full((2,), 0.9))
    torch.testing.assert_close(average.running_mean, torch.full((2,), 0.1 * 2 + 0.9 * 4))
    assert average.num_batches_tracked.item() == 7  # integer buffers are copied
    ema_update(average, model, decay=0.9, n=1000)   # d = 0.9
    torch.testing.assert_close(average.weight, torch.full((2,), 0.9 * 0.9 + 0.1 * 1.0))
    assert not average.weight.requires_grad or average.weight.grad is None


def test_run_scores_and_exports_the_weight_average(tmp_path):
    cfg = compose("dafl_lenet", [f"paths.runs={tmp_path}", "run=ema", *LOOP, *SMALL["dafl"], "distill.ema_decay=0.9"])
    summary = main(cfg)
    run = tmp_path / "ema"
    sd = load_ckpt(run / "last.ckpt")["state_dict"]
    average = {k[len("student_ema.model."):]: v for k, v in sd.items() if k.startswith("student_ema.model.")}
    raw = {k[len("student.model."):]: v for k, v in sd.items() if k.startswith("student.model.")}
    assert average.keys() == raw.keys() and any(not torch.equal(average[k], raw[k]) for k in raw)
    exported = dfkd.load_student(run).model.state_dict()
    for k, v in average.items():
        torch.testing.assert_close(exported[k], v)
    # the command-line export from the checkpoint picks the average too
    (run / "student.pt").unlink()
    export_run(run, "last")
    for k, v in average.items():
        torch.testing.assert_close(dfkd.load_student(run).model.state_dict()[k], v)
    assert 0 <= summary["student"]["heldout_acc"] <= 1
    assert "distill.ema_decay=0.9" in summary["student"]["weights"]
