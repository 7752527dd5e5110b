import math

import pytest
import torch

from dfkd.synthesizers import SYNTHESIZERS
from dfkd.synthesizers.deepinversion import cosine_lr
from tests.helpers import assert_teacher_untouched, bn_loss_by_hand, teacher_snapshot, tiny_pair


def make(**kw):
    teacher, student, ctx = tiny_pair()
    args = dict(batch_size=8, iterations=4, lr=0.1, adi=0.5, tv_l2=1e-3, tv_l1=1e-3, l2=1e-4, flip=True)
    args.update(kw)
    syn = SYNTHESIZERS.build("deepinversion", **args)
    syn.attach(teacher, student, ctx)
    return syn, teacher, student


def test_gradients_reach_the_pixels_and_never_teacher_or_student():
    syn, teacher, student = make()
    before = teacher_snapshot(teacher)
    student.eval()
    z = syn.randn(8, 1, 12, 12).requires_grad_(True)
    terms = syn.loss_terms(z, syn.sample_targets(8))
    total = sum(syn.w[k] * v for k, v in terms.items() if k in syn.w)
    (g,) = torch.autograd.grad(total, [z])
    assert g.abs().sum() > 0 and set(terms) >= {"bn", "ce", "tv_l2", "tv_l1", "l2", "adi"}
    student.train()
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    batch = syn.synthesize()
    assert batch.images.shape == (8, 1, 12, 12) and not batch.images.requires_grad
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert_teacher_untouched(teacher, before)
    assert all(p.grad is None for p in student.parameters())
    # the ADI term scores with the student in eval mode, which is then restored to train
    assert student.training
    for k, v in student.state_dict().items():
        assert torch.equal(v, student_before[k]), f"student {k} changed during synthesis"


def test_optimization_lowers_the_loss_and_keeps_the_best_batch():
    syn, teacher, _ = make(iterations=30, lr=0.2, adi=0.0, jitter=0, flip=False)
    torch.manual_seed(0)
    targets = syn.sample_targets(8)
    z0 = syn.randn(8, 1, 12, 12)
    first = sum(syn.w[k] * v for k, v in syn.loss_terms(z0, targets).items() if k in syn.w).item()
    batch = syn.synthesize()
    assert batch.losses["total"] < first
    z_best = (batch.images - syn.data_mean) / syn.data_std
    # re-scoring the returned batch (no jitter) gives its recorded best loss
    again = sum(syn.w[k] * v for k, v in syn.loss_terms(z_best, batch.targets).items() if k in syn.w).item()
    assert math.isclose(again, batch.losses["total"], rel_tol=1e-3, abs_tol=1e-3)


@pytest.mark.parametrize("keep_best", [True, False])
def test_the_returned_images_carry_no_graph_whichever_iterate_is_kept(keep_best):
    """Kills removing `pixels.detach()` (deepinversion.py, keep_best=false) and the detach in LowestLoss."""
    syn, *_ = make(keep_best=keep_best)
    batch = syn.synthesize()
    assert not batch.images.requires_grad and batch.images.grad_fn is None


def test_targets_are_class_balanced_and_ranks_differ():
    syn, *_ = make()
    t = syn.sample_targets(8)
    assert torch.bincount(t, minlength=4).tolist() == [2, 2, 2, 2]
    other, teacher, student = make()
    _, _, ctx = tiny_pair()
    ctx.rank = 1
    other.attach(teacher, student, ctx)
    assert not torch.equal(syn.randn(4, 4), other.randn(4, 4))


def test_rng_state_round_trip_reproduces_synthesis():
    syn, *_ = make(iterations=2)
    state = {k: v.clone() for k, v in syn.extra_state().items()}
    a = syn.synthesize().images
    syn.load_extra_state(state)
    b = syn.synthesize().images
    assert torch.equal(a, b)


def test_cosine_lr_policy():
    assert cosine_lr(1.0, 0, 100, 10) == 0.1
    assert cosine_lr(1.0, 9, 100, 10) == 1.0
    assert cosine_lr(1.0, 10, 100, 10) == 1.0
    assert math.isclose(cosine_lr(1.0, 55, 100, 10), 0.5)
    assert cosine_lr(1.0, 0, 100, 0) == 1.0


def test_each_term_and_the_weighted_total_match_a_hand_computation():
    """DeepInversion eq. 2-8 on one batch, computed here from the teacher's BN inputs and both networks' logits.
    Fails on a sign mutant of any term (ADI's competition term `1 - JS` negated among them), and on any weight set
    to zero or negated (the weights below are distinct and all non-zero)."""
    w = dict(bn=0.7, ce=1.3, tv_l2=0.02, tv_l1=0.05, l2=0.01, adi=0.4)
    syn, teacher, student = make(first_bn_multiplier=1.0, **w)
    student.eval()
    bn_inputs = []
    bns = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.register_forward_hook(lambda m, i, o: bn_inputs.append((m, i[0].detach())))
    torch.manual_seed(0)
    pixels, targets = torch.randn(8, 1, 12, 12), torch.randint(0, 4, (8,))
    terms = syn.loss_terms(pixels, targets, student)

    x01 = pixels * 0.25 + 0.5
    with torch.no_grad():
        t, s = teacher(x01), student(x01)
    diffs = [pixels[..., :, :-1] - pixels[..., :, 1:], pixels[..., :-1, :] - pixels[..., 1:, :],
             pixels[..., 1:, :-1] - pixels[..., :-1, 1:], pixels[..., :-1, :-1] - pixels[..., 1:, 1:]]
    p, q = torch.softmax(s / 3.0, 1).clamp(0.01, 0.99), torch.softmax(t / 3.0, 1).clamp(0.01, 0.99)
    m = (0.5 * (torch.softmax(s / 3.0, 1) + torch.softmax(t / 3.0, 1))).clamp(0.01, 0.99)
    js = (0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)).mean()
    hand = {"bn": bn_loss_by_hand(bn_inputs[-len(bns):], len(bns)),
            "ce": -torch.log_softmax(t, 1).gather(1, targets[:, None]).mean(),
            "tv_l2": sum(d.pow(2).sum().sqrt() for d in diffs), "tv_l1": sum(d.abs().mean() for d in diffs),
            "l2": pixels.flatten(1).pow(2).sum(1).sqrt().mean(), "adi": 1 - js}
    for k, v in hand.items():
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-4), k
    total = sum(w[k] * hand[k] for k in w)
    assert syn.weighted_total(terms).item() == pytest.approx(total.item(), rel=1e-4)
