"""Feature transfer in the loop (dfkd/loop/feature_transfer.py): the pairs of student and teacher modules."""
import pytest
import torch


def test_attention_kind_features_pairs_whole_feature_maps():
    from dfkd.loop.feature_transfer import AttentionTransferLoss

    teacher, student = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1)), torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    loss = AttentionTransferLoss(0.5, ["0"], ["0"], kind="features")
    loss.attach(student, teacher)
    x = torch.randn(3, 1, 4, 4)
    expected = 0.5 * (student(x) - teacher(x)).pow(2).mean()
    assert torch.allclose(loss(3), expected)
    loss.close()
    with pytest.raises(ValueError, match="kind must be one of"):
        AttentionTransferLoss(1.0, ["0"], ["0"], kind="mse")
