"""ZSKT (Micaelli & Storkey, NeurIPS 2019): its generator objective and the options dfkd adds."""
import pytest
import torch
import torch.nn.functional as F

from dfkd.losses import kd_kl_elementwise
from tests.helpers import build_case


def test_zskt_balance_adds_the_information_entropy_of_the_teacher_to_the_generator_loss():
    syn, teacher, student = build_case("zskt", balance=2.0)
    outputs, losses = {}, []
    teacher.register_forward_hook(lambda m, i, o: outputs.setdefault("t", o.detach()))
    student.register_forward_hook(lambda m, i, o: outputs.setdefault("s", o.detach()))
    syn.generator_step = lambda loss: losses.append(loss.detach())
    batch = syn.synthesize()
    s, t = outputs["s"], outputs["t"]
    p = F.softmax(t, 1).mean(0)
    ie = (p * torch.log10(p)).sum()
    assert batch.losses["ie"] == pytest.approx(ie.item(), rel=1e-5)
    assert losses[0].item() == pytest.approx((-kd_kl_elementwise(s, t) + 2.0 * ie).item(), rel=1e-5)


def test_zskt_bn_prior_adds_the_teachers_bn_statistics_loss_to_the_generator_loss():
    syn, teacher, student = build_case("zskt", bn_prior=0.5)
    outputs, bn_inputs, losses = {}, [], []
    teacher.register_forward_hook(lambda m, i, o: outputs.setdefault("t", o.detach()))
    student.register_forward_hook(lambda m, i, o: outputs.setdefault("s", o.detach()))
    bns = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.register_forward_hook(lambda m, i, o: bn_inputs.append((m, i[0].detach())))
    syn.generator_step = lambda loss: losses.append(loss.detach())
    batch = syn.synthesize()
    s, t = outputs["s"], outputs["t"]
    # by hand: per channel mean and biased variance over N, H, W; L2 norms of the differences (DeepInversion eq. 4)
    bn = sum(torch.sqrt(((x.mean((0, 2, 3)) - m.running_mean) ** 2).sum())
             + torch.sqrt(((x.var((0, 2, 3), unbiased=False) - m.running_var) ** 2).sum())
             for m, x in bn_inputs[:len(bns)])
    assert len(bns) > 0 and batch.losses["bn"] == pytest.approx(bn.item(), rel=1e-4)
    assert losses[0].item() == pytest.approx((-kd_kl_elementwise(s, t) + 0.5 * bn).item(), rel=1e-4)
