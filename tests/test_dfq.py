"""DFQ (Choi et al., CVPR-W 2020): its generator objective, adversarial term and BatchNorm requirement."""
import pytest
import torch
import torch.nn.functional as F

from dfkd.hooks import batchnorm_layers
from tests.helpers import bn_loss_by_hand, build_tiny


def test_dfq_generator_loss_is_bn_plus_confidence_plus_balance_minus_kl():
    syn, teacher, student = build_tiny("dfq", bn=0.5, oh=2.0, balance=3.0, adv=1.5)
    outputs, bn_inputs, losses = {}, [], []
    teacher.register_forward_hook(lambda m, i, o: outputs.setdefault("t", o.detach()))
    student.register_forward_hook(lambda m, i, o: outputs.setdefault("s", o.detach()))
    bns = [m for _, m in batchnorm_layers(teacher)]
    for m in bns:
        m.register_forward_hook(lambda m, i, o: bn_inputs.append((m, i[0].detach())))
    syn.generator_step = lambda loss: losses.append(loss.detach())
    batch = syn.synthesize()
    s, t = outputs["s"], outputs["t"]
    bn = bn_loss_by_hand(bn_inputs, len(bns))
    oh = F.cross_entropy(t, t.argmax(1))
    p = F.softmax(t, 1).mean(0)
    balance = (p * torch.log(p)).sum()  # the natural log, as published (log10 is 2.3x weaker)
    kl = (F.softmax(t, 1) * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum(1).mean()
    assert batch.losses["bn"] == pytest.approx(bn.item(), rel=1e-4)
    assert batch.losses["adv"] == pytest.approx(-kl.item(), rel=1e-4) and kl > 0
    assert losses[0].item() == pytest.approx((0.5 * bn + 2 * oh + 3 * balance - 1.5 * kl).item(), rel=1e-4)
    assert syn.sample(5).shape == (5, 1, 12, 12), "the student trains on fresh generator samples"


def test_dfq_adversarial_term_vanishes_only_when_the_student_is_the_teacher():
    """The Fast-Datafree bug (the teacher passed as student) would make this term zero; dfkd scores the student."""
    syn, teacher, student = build_tiny("dfq")
    x = syn.generate(syn.latents(8))
    assert syn.loss_terms(x)[0]["adv"].item() < 0
    object.__setattr__(syn, "_student", teacher)
    assert syn.loss_terms(x)[0]["adv"].item() == pytest.approx(0.0, abs=1e-6)


def test_dfq_refuses_a_teacher_without_batchnorm():
    from dfkd.errors import RunError
    from dfkd.runs.build import build_synthesizer
    from dfkd.runs.config import compose

    with pytest.raises(RunError, match="BatchNorm.*dafl"):
        build_synthesizer(compose("dfq_resnet", ["teacher=lenet5_mnist", "student=lenet5_half"]),
                          torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
