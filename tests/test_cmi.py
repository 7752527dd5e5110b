"""CMI (Fang et al., IJCAI 2021): fresh generators, the projection head, the memory and its loss terms."""
import pytest
import torch
import torch.nn.functional as F

from dfkd.hooks import batchnorm_layers
from dfkd.models.generators import reinitialize
from dfkd.synthesizers import SYNTHESIZERS
from tests.helpers import (DATA, agreeing_student, bn_loss_by_hand, build_tiny, decision_adversarial_by_hand,
                           tiny_pair)


def test_cmi_reinitialize_draws_the_reference_distributions():
    g = torch.nn.Sequential(torch.nn.Conv2d(8, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.Linear(256, 256))
    reinitialize(g, torch.Generator().manual_seed(0))
    assert g[0].weight.std().item() == pytest.approx(0.02, rel=0.1) and torch.all(g[0].bias == 0)
    assert g[1].weight.mean().item() == pytest.approx(1.0, abs=0.01) and torch.all(g[1].bias == 0)
    assert g[2].weight.mean().item() == pytest.approx(0.0, abs=1e-3)


def test_cmi_head_is_sized_from_the_teachers_bn_channels_before_the_optimizers():
    teacher, *_ = tiny_pair()
    syn = SYNTHESIZERS.build("cmi", **SYNTHESIZERS.get("cmi").test_settings, **DATA)
    with pytest.raises(RuntimeError, match="check_teacher"):
        syn.optimizers()
    syn.check_teacher(teacher)
    channels = sum(m.num_features for _, m in batchnorm_layers(teacher))
    assert syn.head[0].in_features == channels and len(syn.optimizers()) == 1


def test_cmi_each_call_starts_a_fresh_generator_and_fills_a_ring_memory():
    syn, *_ = build_tiny("cmi", memory_size=12, n_neg=6, batch_size=8)
    starts = []  # the generator's weights at the first forward of each call
    syn._generator.register_forward_pre_hook(
        lambda m, i: starts.append(m.conv3.weight.detach().clone()) if len(starts) < calls[0] else None)
    calls = [1]
    first = syn.synthesize()
    end_of_first = syn._generator.conv3.weight.detach().clone()
    assert syn.negatives().shape[0] == 6 and syn.memory_count == 8
    calls[0] = 2
    second = syn.synthesize()
    assert not torch.equal(end_of_first, starts[1]), "the second call started from the first call's generator"
    assert starts[1].std().item() == pytest.approx(0.02, rel=0.5)  # CMI's N(0, 0.02) draw, not a trained weight
    assert not torch.equal(first.images, second.images)
    assert syn.memory_count == 16 and syn.memory.shape[0] == 12, "the memory wraps around"
    assert set(first.losses) >= {"bn", "oh", "adv", "cr"}


def test_cmi_loss_terms_match_hand_computation():
    syn, teacher, student = build_tiny("cmi", adv=0.0)
    syn.augment = syn.local_view = torch.nn.Identity()  # both views the image itself: the terms by hand below
    x = torch.rand(8, 1, 12, 12)
    y = torch.randint(4, (8,))
    bn_inputs = []
    bns = [m for _, m in batchnorm_layers(teacher)]
    for m in bns:
        m.register_forward_hook(lambda m, i, o: bn_inputs.append((m, i[0].detach())))
    negatives = torch.randn(3, syn.head[0].in_features)
    terms, f = syn.loss_terms(x, y, negatives, student)
    feats = torch.cat([x.mean((2, 3)) for _, x in bn_inputs[:len(bns)]], 1)
    assert torch.allclose(f, feats, atol=1e-6)
    assert terms["bn"].item() == pytest.approx(bn_loss_by_hand(bn_inputs, len(bns)).item(), rel=1e-4)
    assert terms["oh"].item() == pytest.approx(F.cross_entropy(teacher(x), y).item(), rel=1e-5)
    h = lambda v: F.normalize(syn.head(v), dim=1)  # noqa: E731
    logits = h(feats) @ h(torch.cat([feats, negatives])).t() / syn.cr_tau
    assert terms["cr"].item() == pytest.approx(F.cross_entropy(logits, torch.arange(8)).item(), rel=1e-4)


def test_cmi_adversarial_term_is_the_decision_adversarial_loss_by_hand():
    """Fails on: the sign of the adversarial term flipped, or teacher and student swapped in it."""
    syn, teacher, _ = build_tiny("cmi", augment=[])
    student = agreeing_student(teacher).eval()
    x = torch.rand(8, 1, 12, 12)
    terms, _ = syn.loss_terms(x, torch.randint(4, (8,)), None, student)
    s_logits, t_logits = student(x), teacher(x)
    assert (s_logits.argmax(1) == t_logits.argmax(1)).any()  # the term acts where the two agree
    torch.testing.assert_close(terms["adv"], decision_adversarial_by_hand(s_logits, t_logits), rtol=1e-5, atol=1e-7)
