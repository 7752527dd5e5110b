"""fp16 loss scaling under manual optimization: gradients are clipped after Lightning unscales them (Lightning
issue #18089), and a synthesizer that writes its gradients by hand (FastDFKD's meta-gradient) is refused with
the fix named. fp16 autocast needs a GPU through `trainer.precision`, so the CPU Trainer here gets Lightning's
MixedPrecision plugin with a CPU GradScaler directly."""
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

import dfkd.loop.module as distill
from dfkd.runs.config import compose
from dfkd.runs.run import main
from tests.helpers import LOOP, small


@pytest.fixture
def fp16_loss_scaling(monkeypatch):
    real = pl.Trainer

    def trainer(*args, **kwargs):
        kwargs.pop("precision", None)
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        plugins = [*kwargs.pop("plugins", []), MixedPrecision("16-mixed", "cpu", scaler=scaler)]
        return real(*args, plugins=plugins, **kwargs)

    monkeypatch.setattr(pl, "Trainer", trainer)


def test_student_and_generator_are_clipped_on_unscaled_gradients(tmp_path, monkeypatch, fp16_loss_scaling):
    norms = []
    hook = distill.DistillModule.on_before_optimizer_step

    def recording(self, optimizer):
        hook(self, optimizer)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append((optimizer is self.optimizers()[0].optimizer, torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads])).item(),
            self.trainer.precision_plugin.scaler.get_scale()))

    monkeypatch.setattr(distill.DistillModule, "on_before_optimizer_step", recording)
    max_norm = 1e-3  # far below the natural gradient norms, so every step is clipped to exactly this
    main(compose("zskt_wrn", [f"paths.runs={tmp_path}", "run=clip", *LOOP, *small("zskt_wrn"),
                              f"distill.grad_clip={max_norm}", f"synthesizer.grad_clip={max_norm}"]))
    # steps whose scaled gradients overflowed are skipped by the scaler; every other one was clipped
    finite = [(is_student, norm, scale) for is_student, norm, scale in norms if norm == norm and norm < float("inf")]
    assert {is_student for is_student, _, _ in finite} == {True, False}
    assert all(scale > 1 for _, _, scale in finite)  # the losses were scaled ...
    for _, norm, _ in finite:                         # ... and the clipped norms are the unscaled max_norm
        assert norm == pytest.approx(max_norm, rel=1e-2)


def test_hand_set_gradients_are_refused_under_fp16_loss_scaling(tmp_path, fp16_loss_scaling):
    cfg = compose("fastdfkd_resnet", [f"paths.runs={tmp_path}", "run=fp16", *LOOP, *small("fastdfkd_resnet")])
    with pytest.raises(ValueError, match="bf16-mixed"):
        main(cfg)
