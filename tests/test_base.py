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
