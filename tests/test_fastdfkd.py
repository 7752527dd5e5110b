"""FastDFKD (Fang et al., AAAI 2022): what is particular to it (the generic checks are
tests/test_synthesizer_contract.py)."""
import copy
import math

import torch

from tests.helpers import (agreeing_student, assert_teacher_untouched, build_case, decision_adversarial_by_hand,
                           teacher_snapshot)


def test_fastdfkd_adversarial_term_scores_with_the_student_and_leaves_teacher_and_student_alone():
    syn, teacher, student = build_case("fastdfkd")  # adversarial_after=0: the decision-adversarial term is on
    before_t, before_s = teacher_snapshot(teacher), copy.deepcopy(student.state_dict())
    student.train()
    batch = syn.synthesize()
    assert "adv" in batch.losses and "disagreement" in batch.losses
    assert_teacher_untouched(teacher, before_t)
    assert all(torch.equal(v, before_s[k]) for k, v in student.state_dict().items()) and student.training


def test_fastdfkd_reset_is_identical_on_every_rank_and_state_round_trips():
    a, *_ = build_case("fastdfkd", rank=0)
    b, *_ = build_case("fastdfkd", rank=1)
    a.calls = b.calls = 7
    a.reset_l0()
    b.reset_l0()
    assert torch.equal(a.generator.l1.weight, b.generator.l1.weight)
    assert not torch.equal(a.randn(3), b.randn(3)), "ranks must draw different latents"
    a.synthesize()
    a.synthesize()
    state = copy.deepcopy(a.extra_state())
    assert state["calls"] == 9 and state["bn_ema"] is not None
    c, *_ = build_case("fastdfkd")
    c.load_extra_state(state)
    assert c.calls == 9 and all(torch.equal(x[0], y[0]) for x, y in zip(c.bn_hooks.ema, a.bn_hooks.ema))


def test_fastdfkd_reptile_meta_step_moves_the_meta_generator():
    syn, *_ = build_case("fastdfkd")
    syn.meta = "reptile"
    before = syn.generator.conv3.weight.clone()
    syn.synthesize()
    assert not torch.equal(before, syn.generator.conv3.weight)


def test_bn_momentum_blends_the_batch_with_the_ema():
    from dfkd.hooks import BNStatHooks

    bn = torch.nn.BatchNorm2d(1).eval()
    hooks = BNStatHooks(torch.nn.Sequential(bn), momentum=0.9)
    x1 = torch.full((2, 1, 1, 1), 2.0)   # mean 2, var 0
    with hooks.recording():
        bn(x1)
    assert math.isclose(hooks.loss().item(), 2.0 + 1.0)  # |2 - 0| + |0 - 1|
    hooks.update_ema()
    x2 = torch.tensor([[[[0.0]]], [[[2.0]]]])  # mean 1, var 1
    with hooks.recording():
        bn(x2)
    mean, var = 0.1 * 1 + 0.9 * 2, 0.1 * 1 + 0.9 * 0
    assert math.isclose(hooks.loss().item(), abs(mean) + abs(var - 1), rel_tol=1e-5)


def test_fastdfkd_adversarial_term_is_the_decision_adversarial_loss_by_hand():
    """Fails on: the sign of the adversarial term flipped, or teacher and student swapped in it."""
    syn, teacher, _ = build_case("fastdfkd", augment=[])
    student = agreeing_student(teacher).eval()
    x, terms = syn.loss_terms(syn.generator, syn.randn(8, syn.nz), torch.randint(4, (8,)), student)
    s_logits, t_logits = student(x), teacher(x)
    assert (s_logits.argmax(1) == t_logits.argmax(1)).any()  # the term acts where the two agree
    torch.testing.assert_close(terms["adv"], decision_adversarial_by_hand(s_logits, t_logits), rtol=1e-5, atol=1e-7)
