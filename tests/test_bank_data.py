import torch

from dfkd.bank import SampleBank
from dfkd.data import embedded_mnist_splits
from dfkd.preprocess import Preprocess


def test_bank_ring_buffer_wraps_and_round_trips():
    bank = SampleBank(5, "uint8")
    imgs = torch.linspace(0, 1, 7).view(7, 1, 1, 1).expand(7, 1, 2, 2).contiguous()
    bank.add(imgs[:3], torch.arange(3))
    bank.add(imgs[3:], torch.arange(3, 7))
    assert len(bank) == 5 and bank.added == 7 and bank.head == 2
    # slots 0,1 were overwritten by images 5,6
    assert bank.targets.tolist() == [5, 6, 2, 3, 4]
    assert torch.allclose(bank.images[0].float() / 255, imgs[5], atol=1 / 255)
    clone = SampleBank(5, "uint8")
    clone.load_state_dict(bank.state_dict())
    assert torch.equal(clone.images, bank.images) and clone.head == bank.head
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(bank.sample(4, g1)[0], clone.sample(4, g2)[0])


def test_bank_float16_keeps_values():
    bank = SampleBank(4, "float16")
    x = torch.rand(2, 3, 4, 4)
    bank.add(x)
    assert torch.allclose(bank.images[:2].float(), x, atol=1e-3)


def test_embedded_mnist_split_is_fixed_balanced_and_disjoint():
    s = embedded_mnist_splits(100)
    xt, yt = s.train.tensors
    xv, yv = s.val.tensors
    assert len(yt) == 4000 and len(yv) == 1000
    assert torch.bincount(yv).tolist() == [100] * 10
    assert xt.shape[1:] == (1, 28, 28) and 0 <= xt.min() and xt.max() <= 1
    # no held-out digit appears in the training split
    train_keys = {hash(x.numpy().tobytes()) for x in xt}
    assert not any(hash(x.numpy().tobytes()) in train_keys for x in xv)


def test_preprocess_pads_then_normalizes():
    p = Preprocess([0.5], [0.25], image_size=28, input_size=32, resize="pad")
    out = p(torch.ones(1, 1, 28, 28))
    assert out.shape == (1, 1, 32, 32)
    assert out[0, 0, 0, 0].item() == (0 - 0.5) / 0.25 and out[0, 0, 16, 16].item() == (1 - 0.5) / 0.25
