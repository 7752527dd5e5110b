"""DAFL, DFAD, ZSKT, FastDFKD, KegNet: what is particular to each method (the generic checks, teacher untouched,
student unmoved, optimizers stepped, state round trip, are tests/test_synthesizer_contract.py), and their loss
terms against hand computations."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dfkd.losses import (attention_map, attention_transfer, decision_adversarial_loss, feature_regression, kd_kl,
                         kd_kl_elementwise, tv_l1)
from dfkd.synthesizers import SYNTHESIZERS
from dfkd.synthesizers.dafl import activation_loss, information_entropy_loss, one_hot_loss
from dfkd.synthesizers.kegnet import diversity_loss
from tests.helpers import assert_teacher_untouched, teacher_snapshot, tiny_pair

DATA = dict(num_classes=4, image_shape=(1, 12, 12), mean=[0.5], std=[0.25])
CASES = {
    "dafl": dict(batch_size=8, ngf=4, nz=8, lr=0.01),
    "dfad": dict(batch_size=8, ngf=4, nz=8),
    "zskt": dict(batch_size=8, ngf=4, nz=8, cosine_steps=10),
    "fastdfkd": dict(batch_size=8, ngf=4, nz=8, g_steps=3, adversarial_after=0, reset_l0_at=None,
                     augment=[{"name": "RandomCrop", "size": [12, 12], "padding": 1}]),
    "kegnet": dict(batch_size=8, generators=2, nz=4, beta=1.0),
}


def build(name, rank=0, seed=0, **overrides):
    teacher, student, ctx = tiny_pair(seed=seed)
    ctx.rank = rank
    torch.manual_seed(123)  # identical generator init on every "rank", as DDP's broadcast guarantees
    syn = SYNTHESIZERS.build(name, **{**CASES[name], **overrides}, **DATA)
    syn.attach(teacher, student, ctx)
    return syn, teacher, student


def test_fastdfkd_adversarial_term_scores_with_the_student_and_leaves_teacher_and_student_alone():
    syn, teacher, student = build("fastdfkd")  # adversarial_after=0: the decision-adversarial term is on
    before_t, before_s = teacher_snapshot(teacher), copy.deepcopy(student.state_dict())
    student.train()
    batch = syn.synthesize()
    assert "adv" in batch.losses and "disagreement" in batch.losses
    assert_teacher_untouched(teacher, before_t)
    assert all(torch.equal(v, before_s[k]) for k, v in student.state_dict().items()) and student.training


@pytest.mark.parametrize("name", ["dafl", "dfad", "zskt"])
def test_cosine_steps_decays_the_generator_lr_to_zero(name):
    syn, *_ = build(name, cosine_steps=4)
    lr0 = syn.opt.param_groups[0]["lr"]
    seen = []
    for step in range(4):
        syn.synthesize()
        seen.append(syn.opt.param_groups[0]["lr"])
    expected = [lr0 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(1, 5)]
    assert seen == pytest.approx(expected, abs=1e-12) and seen[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["dafl", "dfad"])
@pytest.mark.parametrize("head, bounded", [("tanh_bn", False), ("sigmoid", True)])
def test_generator_head_decides_whether_images_stay_in_the_unit_range(name, head, bounded):
    syn, *_ = build(name, head=head)
    x = syn.synthesize().images
    assert syn.bounded_images is bounded
    assert x.shape == (8, 1, 12, 12)
    if bounded:
        assert 0 <= x.min() and x.max() <= 1
    else:  # normalized-space BN output mapped to [0,1] space: per-channel batch mean and std are the data set's
        assert x.mean().item() == pytest.approx(0.5, abs=1e-3) and x.std().item() == pytest.approx(0.25, rel=0.05)


def test_zskt_balance_adds_the_information_entropy_of_the_teacher_to_the_generator_loss():
    syn, teacher, student = build("zskt", balance=2.0)
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


def test_fastdfkd_reset_is_identical_on_every_rank_and_state_round_trips():
    a, *_ = build("fastdfkd", rank=0)
    b, *_ = build("fastdfkd", rank=1)
    a.calls = b.calls = 7
    a.reset_l0()
    b.reset_l0()
    assert torch.equal(a.generator.l1.weight, b.generator.l1.weight)
    assert not torch.equal(a.randn(3), b.randn(3)), "ranks must draw different latents"
    a.synthesize()
    a.synthesize()
    state = copy.deepcopy(a.extra_state())
    assert state["calls"] == 9 and state["bn_ema"] is not None
    c, *_ = build("fastdfkd")
    c.load_extra_state(state)
    assert c.calls == 9 and all(torch.equal(x[0], y[0]) for x, y in zip(c.bn_hooks.ema, a.bn_hooks.ema))


def test_fastdfkd_reptile_meta_step_moves_the_meta_generator():
    syn, *_ = build("fastdfkd")
    syn.meta = "reptile"
    before = syn.generator.conv3.weight.clone()
    syn.synthesize()
    assert not torch.equal(before, syn.generator.conv3.weight)


# -- loss terms against hand computations ----------------------------------------------------------------

def test_information_entropy_uses_log10_of_the_batch_mean():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    p = [0.7, 0.3]
    assert math.isclose(information_entropy_loss(logits).item(), sum(v * math.log10(v) for v in p), rel_tol=1e-5)


def test_activation_and_one_hot_losses():
    f = torch.tensor([[1.0, -3.0], [0.0, 2.0]])
    assert activation_loss(f).item() == -1.5
    logits = torch.tensor([[2.0, 0.0]])
    assert math.isclose(one_hot_loss(logits).item(), -math.log(math.exp(2) / (math.exp(2) + 1)), rel_tol=1e-6)


def test_kl_elementwise_is_kl_over_classes():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    ref = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="mean")
    assert torch.allclose(kd_kl_elementwise(s, t), ref, atol=1e-6)
    assert torch.allclose(kd_kl_elementwise(s, t) * 5, kd_kl(s, t), atol=1e-6)


def test_attention_transfer_matches_hand_computation():
    fs = torch.zeros(1, 2, 1, 2)
    fs[0, :, 0, 0] = torch.tensor([1.0, 1.0])   # channel mean of squares: [1, 0]
    ft = torch.zeros(1, 1, 1, 2)
    ft[0, 0, 0] = torch.tensor([3.0, 4.0])      # [9, 16] -> normalized [9/sqrt(337), 16/sqrt(337)]
    a_t = [9 / math.sqrt(337), 16 / math.sqrt(337)]
    hand = ((1 - a_t[0]) ** 2 + (0 - a_t[1]) ** 2) / 2
    assert torch.allclose(attention_map(fs), torch.tensor([[1.0, 0.0]]))
    assert math.isclose(attention_transfer(fs, ft).item(), hand, rel_tol=1e-5)


def test_feature_regression_matches_hand_computation_and_refuses_unequal_shapes():
    fs = torch.tensor([[[[1.0, 2.0]], [[0.0, -1.0]]]])   # 1 x 2 x 1 x 2
    ft = torch.tensor([[[[3.0, 2.0]], [[1.0, 1.0]]]])
    hand = ((1 - 3) ** 2 + 0 + (0 - 1) ** 2 + (-1 - 1) ** 2) / 4
    assert math.isclose(feature_regression(fs, ft).item(), hand, rel_tol=1e-6)
    with pytest.raises(ValueError, match="kind=at"):
        feature_regression(fs, ft[:, :1])


def test_attention_kind_features_pairs_whole_feature_maps():
    from dfkd.attention import AttentionTransferLoss

    teacher, student = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1)), torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    loss = AttentionTransferLoss(0.5, ["0"], ["0"], kind="features")
    loss.attach(student, teacher)
    x = torch.randn(3, 1, 4, 4)
    expected = 0.5 * (student(x) - teacher(x)).pow(2).mean()
    assert torch.allclose(loss(3), expected)
    loss.close()
    with pytest.raises(ValueError, match="kind must be one of"):
        AttentionTransferLoss(1.0, ["0"], ["0"], kind="mse")


def test_decision_adversarial_only_counts_agreeing_samples():
    t = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # sample 0 agrees with the teacher, sample 1 does not
    pt = F.softmax(t[0], 0)
    ps = F.softmax(s[0], 0)
    kl0 = (pt * (pt.log() - ps.log())).sum().item()
    assert math.isclose(decision_adversarial_loss(s, t).item(), -kl0 / 2, rel_tol=1e-5)


def test_kegnet_diversity_loss_matches_hand_computation():
    z = torch.tensor([[0.0, 0.0], [1.0, 3.0]])         # d_z(0,1) = (1 + 9) / 2 = 5
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])  # d_x(0,1) = 2
    # pairs (i, j) over the 2x2 grid: two off-diagonal entries of 5 * 2, two zero diagonal entries
    assert math.isclose(diversity_loss(z, x).item(), math.exp(-(10 + 10) / 4), rel_tol=1e-6)


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


def test_zskt_bn_prior_adds_the_teachers_bn_statistics_loss_to_the_generator_loss():
    syn, teacher, student = build("zskt", bn_prior=0.5)
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


def test_kegnet_options_beyond_the_paper_add_their_terms():
    syn, teacher, student = build("kegnet", head="sigmoid", tv=0.5, l2=0.1, adv=0.25)
    student.eval()
    y, z, x = syn._generate(0, 8)
    assert syn.bounded_images and 0 <= x.min() and x.max() <= 1
    terms = syn.loss_terms(0, y, z, x)
    assert terms["tv"].item() == pytest.approx(tv_l1(x).item())
    assert terms["l2"].item() == pytest.approx(x.flatten(1).norm(dim=1).mean().item(), rel=1e-6)
    assert terms["adv"].item() == pytest.approx(-kd_kl(student(x), teacher(x)).item(), rel=1e-5)
    plain, *_ = build("kegnet")
    assert set(plain.loss_terms(0, *plain._generate(0, 8))) == {"cls", "dec", "div"}
