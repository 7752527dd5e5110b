"""A user's own teacher, as a user brings it: a timm and a torchvision model trained by a plain PyTorch script with
their own normalization (mean 0.5, std 0.5) and saved as state_dicts, then distilled through the command line;
and the mistakes such a user makes, each ending in its message."""
import json

import pytest
import torch
import torch.nn.functional as F

from dfkd.teachers.build import build_teacher
from dfkd.runs.config import compose
from dfkd.data import embedded_mnist_splits
from dfkd.errors import DfkdError
from dfkd.models import build_model
from dfkd.errors import RunError
from tests.helpers import LOOP, command, run, small

OWN_NORM = ["teacher.mean=[0.5]", "teacher.std=[0.5]"]


def train_teacher(arch: str, steps: int) -> torch.nn.Module:
    """A plain PyTorch training loop on the embedded digits, normalized with mean 0.5 / std 0.5."""
    x, y = embedded_mnist_splits().train.tensors
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_chans=1)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(steps):
        i = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(model((x[i] - 0.5) / 0.5), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    timm_model = train_teacher("timm:test_resnet", 150)
    tv_model = train_teacher("torchvision:resnet18", 60)  # 86 % on the held-out digits at 50 steps
    # as users save them: a DDP-wrapped state_dict, a plain one, and a whole pickled module
    torch.save({f"module.{k}": v for k, v in timm_model.state_dict().items()}, folder / "timm.pth")
    torch.save(tv_model.state_dict(), folder / "tv.pt")
    torch.save(tv_model, folder / "tv_whole.pt")
    return folder


@pytest.mark.slow
def test_an_own_teacher_distills_through_the_command_line(teachers, tmp_path, capfd):
    """The timm teacher, DDP-saved, through `train.py` (the torchvision one takes the same road after loading:
    its loading is checked below, at no distillation cost)."""
    arch = "timm:test_resnet"
    status, out, _ = command(tmp_path, "fastdfkd_resnet", "teacher=custom", f"teacher.arch={arch}",
                             f"teacher.checkpoint={teachers}/timm.pth", *OWN_NORM, "run=timm", "distill.epochs=6",
                             "distill.iterations_per_epoch=8", "synthesizer.batch_size=32", "distill.batch_size=64",
                             "distill.stop_at_chance_after=null", "++data.limit_val=200",  # judged at the end
                             capture=capfd)
    assert status == 0 and f"teacher {arch}" in out and "one synthesized batch of 32 images took" in out
    s = json.loads((tmp_path / "timm" / "summary.json").read_text())
    assert s["teacher"]["report_acc"] > 0.8
    assert s["student"]["report_acc"] > 0.25 and not s["student"]["at_chance"]  # chance is 0.10


def test_a_torchvision_state_dict_loads_and_scores_as_trained(teachers):
    teacher = build_teacher(compose("fastdfkd_resnet", ["teacher=custom", "teacher.arch=torchvision:resnet18",
                                                        f"teacher.checkpoint={teachers}/tv.pt", *OWN_NORM]))
    x, y = embedded_mnist_splits().report.tensors
    with torch.no_grad():
        acc = (teacher(x).argmax(1) == y).float().mean().item()
    assert acc > 0.8, f"the torchvision teacher scores {acc:.3f} on the held-out digits"


def test_a_normalization_mismatch_stops_before_synthesis_naming_the_fix(teachers, tmp_path):
    with pytest.raises(RunError, match=r"teacher scores \d+\.\d % on the \d+ tuning images(.|\n)*teacher.mean/std"):
        run(tmp_path, "fastdfkd_resnet", "teacher=custom", "teacher.arch=timm:test_resnet", "run=x",
            f"teacher.checkpoint={teachers}/timm.pth", *LOOP)  # trained with 0.5/0.5, given MNIST's statistics
    assert not (tmp_path / "x").exists()


def test_weights_of_another_architecture_name_the_likely_one(teachers):
    with pytest.raises(DfkdError, match="does not fit teacher.arch=resnet18(.|\n)*torchvision:resnet18"):
        build_teacher(compose("fastdfkd_resnet", ["teacher=custom", "teacher.arch=resnet18",
                                                  f"teacher.checkpoint={teachers}/tv.pt", *OWN_NORM]))


def test_a_pickled_module_is_refused_unless_trusted(teachers):
    over = ["teacher=custom", "teacher.arch=torchvision:resnet18", f"teacher.checkpoint={teachers}/tv_whole.pt",
            *OWN_NORM]
    with pytest.raises(DfkdError, match="other than tensors(.|\n)*state_dict(.|\n)*teacher.trust_pickle=true"):
        build_teacher(compose("fastdfkd_resnet", over))
    with pytest.warns(UserWarning, match="arbitrary code"):
        teacher = build_teacher(compose("fastdfkd_resnet", [*over, "teacher.trust_pickle=true"]))
    assert teacher(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_an_own_factory_builds_the_teacher(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(width=8):\n"
        "    return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose("deepinversion_resnet", ["teacher=custom", "teacher.arch=my_nets:tiny", "teacher.arch_kwargs.width=4",
                                           "teacher.random_init=true"])
    assert build_teacher(cfg)(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_a_layer_name_of_another_teacher_lists_the_real_ones(tmp_path):
    with pytest.raises(DfkdError, match=r"feature_layer='fc1' is not a module of the teacher(.|\n)*"
                                        r"feature_layer=null"):
        run(tmp_path, "dafl_lenet", "teacher=resnet8_mnist", *LOOP)  # DAFL's recipe names LeNet-5's fc1


@pytest.mark.slow
def test_the_readme_timm_student_example_runs(tmp_path):
    """README: `python train.py recipe=deepinversion_resnet student.arch=timm:mobilenetv3_small_050`."""
    s = run(tmp_path, "deepinversion_resnet", "student.arch=timm:mobilenetv3_small_050", "run=mb", *LOOP,
            *small("deepinversion_resnet"))
    assert s["student"]["arch"] == "timm:mobilenetv3_small_050"
