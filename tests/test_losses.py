"""Every loss term against a hand computation on tiny tensors."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd.hooks import BNStatHooks
from dfkd.losses import (attention_map, attention_transfer, bn_stat_loss, decision_adversarial_loss, feature_regression,
                         image_l2, instance_contrastive_loss, js_divergence, kd_hard_label, kd_kl, kd_kl_elementwise,
                         kd_l1, mean_negative_entropy, tv_l1, tv_l2)
from dfkd.synthesizers.dafl import activation_loss, information_entropy_loss, one_hot_loss
from dfkd.synthesizers.kegnet import diversity_loss
from dfkd.teachers.black_box import logits_from_answers


def test_kd_kl_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[0.0, 1.0, 3.0]])
    tau = 2.0
    p_t = [math.exp(v / tau) for v in (0.0, 1.0, 3.0)]
    p_t = [v / sum(p_t) for v in p_t]
    p_s = [math.exp(v / tau) for v in (1.0, 2.0, 0.0)]
    p_s = [v / sum(p_s) for v in p_s]
    hand = sum(a * math.log(a / b) for a, b in zip(p_t, p_s)) * tau * tau
    assert math.isclose(kd_kl(s, t, tau).item(), hand, rel_tol=1e-5)


def test_kd_kl_is_batch_mean_and_zero_when_equal():
    x = torch.randn(4, 5)
    assert kd_kl(x, x, 3.0).abs().item() < 1e-6
    a, b = torch.randn(2, 5), torch.randn(2, 5)
    both = kd_kl(a, b)
    each = (kd_kl(a[:1], b[:1]) + kd_kl(a[1:], b[1:])) / 2
    assert torch.allclose(both, each, atol=1e-6)


def test_kd_l1_is_mean_absolute_logit_difference():
    s = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert math.isclose(kd_l1(s, t).item(), (1 + 2 + 0.5 + 1) / 4)


def test_js_divergence_matches_hand_computation():
    a = torch.tensor([[2.0, 0.0]])
    b = torch.tensor([[0.0, 0.0]])
    tau = 1.0
    p = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    q = [0.5, 0.5]
    m = [(x + y) / 2 for x, y in zip(p, q)]
    kl = lambda u, v: sum(x * math.log(x / y) for x, y in zip(u, v))  # noqa: E731
    hand = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    assert math.isclose(js_divergence(a, b, tau, clamp=None).item(), hand, rel_tol=1e-5)
    # symmetric, zero on equal inputs, bounded by ln 2
    assert math.isclose(js_divergence(b, a, tau, None).item(), hand, rel_tol=1e-5)
    assert js_divergence(a, a, tau).item() < 1e-7
    far = js_divergence(torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]]), 1.0, None)
    assert math.isclose(far.item(), math.log(2), rel_tol=1e-4)


def test_js_clamp_limits_probabilities():
    far = js_divergence(torch.tensor([[50.0, 0.0]]), torch.tensor([[0.0, 50.0]]), 1.0, (0.01, 0.99))
    p, q, m = [0.99, 0.01], [0.01, 0.99], [0.5, 0.5]
    kl = lambda u, v: sum(x * math.log(x / y) for x, y in zip(u, v))  # noqa: E731
    assert math.isclose(far.item(), 0.5 * kl(p, m) + 0.5 * kl(q, m), rel_tol=1e-5)


def test_bn_stat_loss_is_sum_of_l2_norms():
    mean, var = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])
    rm, rv = torch.tensor([1.0, 0.0]), torch.tensor([4.0, 5.0])
    assert math.isclose(bn_stat_loss(mean, var, rm, rv).item(), 2.0 + 5.0)


def test_tv_terms_match_hand_computation():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # right: (0-1),(2-4) ; down: (0-2),(1-4) ; diag /: x[1,0]-x[0,1] = 2-1 ; diag \: x[0,0]-x[1,1] = 0-4
    right, down, anti, diag = [1.0, 2.0], [2.0, 3.0], [1.0], [4.0]
    l2 = sum(math.sqrt(sum(v * v for v in d)) for d in (right, down, anti, diag))
    l1 = sum(sum(d) / len(d) for d in (right, down, anti, diag))
    assert math.isclose(tv_l2(x).item(), l2, rel_tol=1e-6)
    assert math.isclose(tv_l1(x).item(), l1, rel_tol=1e-6)
    assert tv_l2(torch.ones(2, 3, 5, 5)).item() == 0


def test_image_l2_is_mean_per_image_norm():
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0, 0] = 3.0
    x[0, 0, 1, 1] = 4.0
    x[1, 0, 0, 1] = 1.0
    assert math.isclose(image_l2(x).item(), (5.0 + 1.0) / 2)


def test_bn_hooks_compute_the_loss_of_the_bn_input_with_first_multiplier():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).eval()
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    hooks = BNStatHooks(net, first_multiplier=10.0)
    x = torch.randn(4, 1, 6, 6)
    with hooks.recording():
        net(x)
    a = net[0](x)
    b = net[3](net[2](net[1](a)))
    hand = 0.0
    for w, inp, bn in ((10.0, a, net[1]), (1.0, b, net[4])):
        mu = inp.mean((0, 2, 3))
        var = inp.var((0, 2, 3), unbiased=False)
        hand += w * ((mu - bn.running_mean).norm() + (var - bn.running_var).norm())
    assert torch.allclose(hooks.loss(), hand, rtol=1e-4)
    # inactive outside recording(): an ordinary forward records nothing
    net(x)
    assert len(hooks.losses) == 2
    hooks.close()


def test_bn_hooks_refuse_a_model_without_batchnorm():
    import pytest

    with pytest.raises(ValueError, match="no BatchNorm"):
        BNStatHooks(nn.Sequential(nn.Conv2d(1, 1, 1)))


# -- analytic gradients of every differentiable term agree with finite differences (float64) -------------

def _gradcheck_cases():
    from dfkd.losses import (
        attention_transfer,
        decision_adversarial_loss,
        feature_regression,
        information_entropy_loss,
        instance_contrastive_loss,
        kd_kl_elementwise,
        mean_negative_entropy,
    )
    from dfkd.synthesizers.dafl import activation_loss
    from dfkd.synthesizers.kegnet import diversity_loss

    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    t, feats, running_mean, running_var, z = r(3, 4), r(2, 3, 4, 4), r(3), r(3).abs() + 1, r(3, 2)
    keys = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return {
        "kd_kl": (lambda s: kd_kl(s, t, 3.0), r(3, 4)),
        "kd_kl_elementwise": (lambda s: kd_kl_elementwise(s, t), r(3, 4)),
        "kd_l1": (lambda s: kd_l1(s, t), r(3, 4)),
        "js_divergence": (lambda s: js_divergence(s, t, 3.0, clamp=None), r(3, 4)),
        "information_entropy": (information_entropy_loss, r(3, 4)),
        "mean_negative_entropy": (mean_negative_entropy, r(3, 4)),
        "attention_transfer": (lambda f: attention_transfer(f, feats), r(2, 2, 4, 4)),
        "feature_regression": (lambda f: feature_regression(f, feats), r(2, 3, 4, 4)),
        "bn_stat_loss": (lambda m: bn_stat_loss(m, m.abs() + 1, running_mean, running_var), r(3)),
        "tv_l2": (tv_l2, r(2, 1, 4, 4)),
        "tv_l1": (tv_l1, r(2, 1, 4, 4)),
        "image_l2": (image_l2, r(2, 1, 4, 4)),
        "activation": (activation_loss, r(3, 5)),
        "decision_adversarial": (lambda s: decision_adversarial_loss(s, t), r(3, 4)),
        "diversity": (lambda x: diversity_loss(z, x), r(3, 6)),
        "instance_contrastive": (lambda a: instance_contrastive_loss(a, keys, 0.5), r(2, 3)),
    }


def test_every_differentiable_loss_term_passes_gradcheck():
    for name, (fn, x) in _gradcheck_cases().items():
        assert torch.autograd.gradcheck(fn, (x.requires_grad_(),), eps=1e-6, atol=1e-5), name


def test_information_entropy_uses_log10_of_the_batch_mean():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    p = [0.7, 0.3]
    assert math.isclose(information_entropy_loss(logits).item(), sum(v * math.log10(v) for v in p), rel_tol=1e-5)


def test_class_balance_uses_the_natural_log_of_the_batch_mean():
    """DFQ's term; kills a log10 in its place (2.3x weaker at the published weight 20)."""
    from dfkd.losses import class_balance_loss

    logits = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    assert math.isclose(class_balance_loss(logits).item(), sum(v * math.log(v) for v in [0.7, 0.3]), rel_tol=1e-5)


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


def test_instance_contrastive_loss_matches_hand_computation():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])            # normalized: (0.6, 0.8), (1, 0)
    k = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, -1.0]])  # normalized: (0, 1), (1, 0), (0, -1)
    tau = 0.5
    sims = [[0.8, 0.6, -0.8], [0.0, 1.0, 0.0]]
    expected = sum(-math.log(math.exp(row[i] / tau) / sum(math.exp(v / tau) for v in row))
                   for i, row in enumerate(sims)) / 2
    assert instance_contrastive_loss(a, k, tau).item() == pytest.approx(expected, rel=1e-6)


def test_logit_recovery_and_hard_label_loss_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25]])
    logs = [math.log(0.5), math.log(0.25), math.log(0.25)]
    mean = sum(logs) / 3
    torch.testing.assert_close(logits_from_answers(p), torch.tensor([[v - mean for v in logs]]))
    s = torch.tensor([[2.0, 0.0, 1.0]])
    t = logits_from_answers(torch.tensor([[0.0, 0.0, 1.0]]))  # a label-only answer: class 2
    expected = -(1.0 - math.log(math.exp(2) + 1 + math.e))
    assert kd_hard_label(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_ideal_information_term_by_hand():
    """mean over images and classes of p ln p: for p = (0.5, 0.25, 0.25) and a uniform (1/3, 1/3, 1/3) row."""
    logits = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)], [0.0, 0.0, 0.0]])
    row0 = 0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)
    row1 = 3 * (1 / 3) * math.log(1 / 3)
    assert mean_negative_entropy(logits).item() == pytest.approx((row0 + row1) / 6, rel=1e-6)
