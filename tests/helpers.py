"""Small models and contexts for unit tests (random init, CPU, seconds)."""
import torch

from dfkd.checkpoint_io import build_classifier
from dfkd.synthesizers import SynthContext


def tiny_pair(seed: int = 0, image_size: int = 12, channels: int = 1, num_classes: int = 4):
    torch.manual_seed(seed)
    mk = lambda w: build_classifier("resnet8", {"width": w}, num_classes, channels, image_size, image_size,  # noqa: E731
                                    "pad", [0.5] * channels, [0.25] * channels)
    teacher, student = mk(0.5), mk(0.25)
    # give the teacher non-trivial BN running stats, as a trained network has
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    teacher.eval().requires_grad_(False)
    ctx = SynthContext(num_classes, (channels, image_size, image_size), (0.5,) * channels, (0.25,) * channels,
                       torch.device("cpu"), seed=seed)
    return teacher, student, ctx


def teacher_snapshot(teacher):
    return {k: v.clone() for k, v in teacher.state_dict().items()}


def assert_teacher_untouched(teacher, before):
    assert not teacher.training
    for p in teacher.parameters():
        assert p.grad is None, "a gradient reached the teacher"
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher state {k} changed (BN running stats must not move)"
