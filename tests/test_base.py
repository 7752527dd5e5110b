"""The synthesizer base class's shared pieces (dfkd/synthesizers/base.py) that are not the plug-in contract."""
import torch

from dfkd.synthesizers.base import LowestLoss


def test_lowest_loss_keeps_the_lowest_iterate_the_earlier_on_ties_and_no_graph():
    """Fails on `.detach()` removed from `LowestLoss.offer` (base.py: the kept loss or iterate would hold the autograd
    graph of its step, and a synthesizer would return images that require grad)."""
    lowest = LowestLoss()
    x = torch.zeros(3, requires_grad=True)
    for loss, shift in ((2.0, 1.0), (1.0, 2.0), (1.0, 3.0), (5.0, 4.0)):
        y = x + shift
        lowest.offer(y.sum() * 0 + loss, y)
    assert lowest.loss.item() == 1.0 and torch.equal(lowest.values[0], torch.full((3,), 2.0))
    assert not lowest.loss.requires_grad and not lowest.values[0].requires_grad


def _student_with_bn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3))


def _scorer(mode: str):
    from dfkd.synthesizers.base import Synthesizer
    syn = Synthesizer(batch_size=2)
    syn.set_student_mode(mode)
    syn._student = _student_with_bn()
    syn._student.train()
    return syn


def test_scoring_student_train_mode_uses_batch_statistics_and_keeps_the_running_ones():
    x = torch.randn(6, 1, 8, 8) * 3 + 2  # far from the fresh running statistics (0, 1)
    scores = {}
    for mode in ("eval", "train"):
        syn = _scorer(mode)
        bn = syn.student[1]
        with syn.scoring_student() as student:
            assert all(not p.requires_grad for p in student.parameters())
            assert student.training == (mode == "train")
            scores[mode] = student(x)
            h = student[0](x)
        assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var, torch.ones(4))
        assert bn.momentum == 0.1 and syn.student.training and all(p.requires_grad for p in syn.student.parameters())
    by_batch = torch.nn.functional.batch_norm(h, None, None, bn.weight, bn.bias, training=True)
    expected = syn.student[3](by_batch.flatten(1))
    assert torch.allclose(scores["train"], expected, atol=1e-5)
    assert not torch.allclose(scores["eval"], scores["train"], atol=1e-2)


def test_student_mode_refuses_an_unknown_mode_naming_the_choices():
    import pytest

    from dfkd.errors import DfkdError
    with pytest.raises(DfkdError, match="eval, train"):
        _scorer("batch")
