import torch
import torch.nn as nn

from dfkd.models import build_model
from dfkd.models.tucker import compress, evbmf_rank, tucker2_layers


def test_full_rank_tucker_reproduces_the_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(tucker2_layers(conv, 6, 8)(x), conv(x), atol=1e-4, rtol=1e-4)


def test_evbmf_recovers_the_rank_of_a_noisy_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(60, 4, generator=g) @ torch.randn(4, 80, generator=g) * 3
    noisy = low + 0.1 * torch.randn(60, 80, generator=g)
    assert evbmf_rank(noisy) == 4


def test_compressed_student_rebuilds_from_recorded_ranks():
    torch.manual_seed(0)
    teacher = build_model("lenet5", num_classes=10, in_chans=1)
    student, ranks = compress(teacher, ["conv2", "conv3"], rank=0.5)
    assert ranks == {"conv2": [3, 8], "conv3": [8, 60]}
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    rebuilt = build_model("tucker", num_classes=10, in_chans=1, base="lenet5", ranks=ranks)
    rebuilt.load_state_dict(student.state_dict())
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(rebuilt(x), student(x))


def test_by_default_the_convolution_reading_the_image_stays_whole():
    """A rank-1 input convolution mixed the RGB channels into one (kegnet_cifar10 started at 21 %)."""
    teacher = build_model("resnet20", num_classes=10, in_chans=3)
    _, ranks = compress(teacher, rank=0.4, in_chans=3)
    first = next(n for n, m in teacher.named_modules() if isinstance(m, nn.Conv2d))
    assert first not in ranks and len(ranks) == 18  # the 18 block convolutions of a ResNet-20
    _, asked = compress(teacher, [first], rank=0.4, in_chans=3)
    assert asked == {first: [1, 6]}  # compressed when named
