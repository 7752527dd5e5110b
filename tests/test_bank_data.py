import pytest
import torch

from dfkd.loop.bank import SampleBank
from dfkd.data import embedded_mnist_splits
from dfkd.models.classifier import Preprocess


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


def test_balanced_sampling_draws_each_class_equally_often():
    """A memory of teacher logits where class 2 is 90 of 100 rows and class 0 the other 10: uniform draws follow
    that 9:1 split, balanced draws give each present class half, each row of a class equally often."""
    logits = torch.zeros(100, 3)
    logits[:10, 0] = 5.0
    logits[10:, 2] = 5.0
    bank = SampleBank(110, "float32")
    bank.add(torch.arange(100.0).view(100, 1, 1, 1) / 100, logits)
    g = torch.Generator().manual_seed(0)
    _, uniform = bank.sample(20000, g)
    images, balanced = bank.sample(20000, g, balanced=True)
    assert abs(float((uniform.argmax(1) == 0).float().mean()) - 0.1) < 0.01
    assert abs(float((balanced.argmax(1) == 0).float().mean()) - 0.5) < 0.01   # 10,000 +- 71 (binomial)
    rows = torch.bincount((images.flatten() * 100).round().long(), minlength=100).float()
    assert abs(rows[:10].mean() - 1000) < 40 and abs(rows[10:].mean() - 10000 / 90) < 5
    bank.add(torch.zeros(10, 1, 1, 1), torch.tensor([[0.0, 5.0, 0.0]]).expand(10, 3))  # a third class arrives
    newest = bank.sample(30000, g, balanced=True)[1].argmax(1)
    assert abs(float((newest == 1).float().mean()) - 1 / 3) < 0.01   # the weights follow the memory's contents
    labelled = SampleBank(4, "uint8")  # a bank of class labels balances on the labels
    labelled.add(torch.rand(4, 1, 2, 2), torch.tensor([1, 1, 1, 0]))
    assert abs(float((labelled.sample(8000, g, balanced=True)[1] == 0).float().mean()) - 0.5) < 0.02


def test_bank_float16_keeps_values():
    bank = SampleBank(4, "float16")
    x = torch.rand(2, 3, 4, 4)
    bank.add(x)
    assert torch.allclose(bank.images[:2].float(), x, atol=1e-3)


def test_embedded_mnist_split_is_fixed_balanced_and_disjoint():
    s = embedded_mnist_splits(100)
    xt, yt = s.train.tensors
    xv, yv = s.report.tensors
    assert len(yt) == 4000 and len(yv) == 1000
    assert torch.bincount(yv).tolist() == [100] * 10
    assert xt.shape[1:] == (1, 28, 28) and 0 <= xt.min() and xt.max() <= 1
    # no held-out digit appears in the training split
    train_keys = {hash(x.numpy().tobytes()) for x in xt}
    assert not any(hash(x.numpy().tobytes()) in train_keys for x in xv)


def test_the_tuning_split_is_a_fixed_draw_of_the_training_images_never_of_the_reporting_ones():
    from omegaconf import OmegaConf

    from dfkd.data import build_splits

    data = OmegaConf.create({"name": "mnist_embedded", "val_per_class": 100, "tune_size": 1000})
    s, again = build_splits(data), build_splits(data)
    assert s.sizes() == {"train": 4000, "tune": 1000, "report": 1000}
    assert s.tune.indices == again.tune.indices and s.tune.dataset is s.train  # drawn from train, the same each time
    assert len(set(s.tune.indices)) == 1000
    report = {hash(x.numpy().tobytes()) for x in s.report.tensors[0]}
    assert not any(hash(s.tune[i][0].numpy().tobytes()) in report for i in range(len(s.tune)))
    with pytest.raises(ValueError, match="data.tune_size must be at least 1"):
        build_splits(OmegaConf.create({"name": "mnist_embedded", "tune_size": 0}))


def test_preprocess_pads_then_normalizes():
    p = Preprocess([0.5], [0.25], image_size=28, input_size=32, resize="pad")
    out = p(torch.ones(1, 1, 28, 28))
    assert out.shape == (1, 1, 32, 32)
    assert out[0, 0, 0, 0].item() == (0 - 0.5) / 0.25 and out[0, 0, 16, 16].item() == (1 - 0.5) / 0.25


def test_replay_keeps_the_kd_batch_size_when_the_synthesized_batch_is_larger():
    """A synthesized batch of 200 beside a KD batch of 8: fraction 0.75 keeps 2 fresh rows, fraction 1 none (a
    label-only teacher would otherwise be asked about the round's images a second time)."""
    from dfkd.loop.kd_batches import KDBatchSource
    from dfkd.synthesizers.base import SynthBatch

    class NoSample:  # a synthesizer whose KD batches come from its latest batch
        def sample(self, n):
            return None

    for fraction, fresh in ((0.75, 2), (1.0, 0)):
        source = KDBatchSource(8, {"enabled": False, "capacity": 10, "dtype": "float32"},
                               {"capacity": 16, "fraction": fraction})
        source.start(torch.device("cpu"), 0, 0)
        source.remember([(torch.rand(4, 1, 2, 2), torch.eye(4))])
        synthesized = torch.rand(200, 1, 2, 2)
        source.latest = SynthBatch(synthesized)
        for ask_every_row in (True, False):  # a white box sees every drawn row, a black box only those kept
            source.start(torch.device("cpu"), 0, 0, ask_every_row=ask_every_row)
            batch = source.next(NoSample(), augment=lambda x: x)
            assert batch.asked.shape[0] == (200 if ask_every_row else fresh) and batch.fresh.shape[0] == fresh
            assert batch.student_input.shape[0] == batch.targets(torch.zeros(len(batch.asked), 4)).shape[0] == 8
