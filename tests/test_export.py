
import pytest
import torch

import dfkd
from dfkd.models.files import clean_state_dict
from dfkd.runs.export import cli, export_run
from dfkd.runs.config import compose
from dfkd.runs.run import main
from tests.helpers import LOOP, small


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    main(compose("deepinversion_resnet", [f"paths.runs={tmp}", "run=exp", *LOOP, *small("deepinversion_resnet")]))
    return tmp / "exp"


def test_exported_student_rebuilds_from_the_file_alone_and_matches_the_checkpoint(run_dir):
    path = export_run(run_dir)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors and containers only
    assert raw["arch"] == "resnet8" and raw["arch_kwargs"] == {"width": 0.5} and raw["num_classes"] == 10
    assert raw["mean"] == pytest.approx([0.1307]) and raw["image_size"] == 28
    assert raw["recipe"]["recipe"] == "deepinversion_resnet"
    student = dfkd.load_student(run_dir)
    assert not student.training
    x = torch.rand(5, 1, 28, 28)  # [0,1] images at MNIST's native size: preprocessing is inside
    ck = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    from dfkd.models.files import build_classifier

    ref = build_classifier("resnet8", {"width": 0.5}, 10, 1, 28, 28, "pad", [0.1307], [0.3081]).eval()
    # the scored student: the weight average under the tier's protocol (distill.ema_decay), else the student
    prefix = "student_ema.module.model." if any(k.startswith("student_ema.") for k in ck) else "student.model."
    ref.model.load_state_dict({k[len(prefix):]: v for k, v in ck.items() if k.startswith(prefix)})
    torch.testing.assert_close(student(x), ref(x))
    assert not any(k.startswith("teacher.") for k in ck), "the teacher must not be saved in run checkpoints"


def test_export_cli_writes_torchscript_and_onnx(run_dir):
    assert cli([str(run_dir), "--torchscript", "--onnx"]) == 0
    x = torch.rand(3, 1, 28, 28)
    ts = torch.jit.load(str(run_dir / "student.ts"))
    torch.testing.assert_close(ts(x), dfkd.load_student(run_dir)(x))
    import onnx

    onnx.checker.check_model(onnx.load(str(run_dir / "student.onnx")))


def test_export_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    assert cli([str(tmp_path)]) == 2 and "not a dfkd run folder" in capsys.readouterr().err


def test_prefixes_of_ddp_and_compile_are_stripped():
    sd = {"module._orig_mod.conv.weight": 1, "_orig_mod.fc.bias": 2, "layer._orig_mod.x": 3}
    assert clean_state_dict(sd) == {"conv.weight": 1, "fc.bias": 2, "layer.x": 3}


def test_load_student_rejects_a_foreign_file(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="not a dfkd model file"):
        dfkd.load_student(p)
