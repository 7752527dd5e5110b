"""The CIFAR-10 CPU tier: one `<method>_cifar10` recipe per method, each distilling the shipped ResNet-20 teacher
into a student at least 3x smaller. Every recipe runs a smoke step on a tiny archive of random 32x32 images made
here (the shipped teacher, the recipe's own settings shrunk to its synthesizer's test settings); the accuracy of
the full recipes is the benchmark's business (`python -m dfkd.bench --suite cifar10`)."""
import tarfile

import numpy as np
import pytest
from PIL import Image

from dfkd.bench.suite import cli as bench_cli
from dfkd.bench.suite import suite_recipes
from dfkd.models import count_params
from dfkd.runs.build import build_student
from dfkd.runs.config import compose
from dfkd.synthesizers import SYNTHESIZERS
from dfkd.teachers.build import build_teacher
from tests.helpers import LOOP, SMOKE_KD_STEPS, check_kd_loss_fell, check_run_folder, run, small

CIFAR10_RECIPES = suite_recipes("cifar10")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """train.tar.gz of 10 class folders with 3 random 32x32 JPEGs each (one a class is held out)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.jpg")
    path = root / "train.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / "train", arcname="train")
    return path


def data_on(archive) -> list[str]:
    # the teacher gate is off: a trained teacher scores near chance on random images
    return [f"data.root={archive}", "data.val_per_class=1", f"data.cache_dir={archive.parent / 'cache'}",
            "teacher.check_accuracy=false"]


def test_every_registered_method_has_a_cifar10_recipe():
    methods = {compose(r, ["data.root=x"]).synthesizer.name for r in CIFAR10_RECIPES}
    builtin = {name for name in SYNTHESIZERS.names() if SYNTHESIZERS.get(name).__module__.startswith("dfkd.")}
    assert builtin <= methods, f"no <method>_cifar10 recipe for {sorted(builtin - methods)}"
    assert all(r == f"{compose(r, ['data.root=x']).synthesizer.name}_cifar10" for r in CIFAR10_RECIPES)


@pytest.mark.parametrize("recipe", CIFAR10_RECIPES)
def test_student_has_at_least_3x_fewer_parameters_than_the_shipped_teacher(recipe):
    # black-box recipes: the same shipped teacher, opened here to count its parameters
    cfg = compose(recipe, ["data.root=x", "teacher.access=white", "teacher.max_queries=null"])
    teacher = build_teacher(cfg)
    assert count_params(teacher) >= 3 * count_params(build_student(cfg, teacher).classifier)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", CIFAR10_RECIPES)
def test_every_cifar10_recipe_runs_a_smoke_step_on_an_archive(tmp_path, archive, recipe, kd_losses):
    run(tmp_path, recipe, "run=smoke", *data_on(archive), *LOOP, *small(recipe), *SMOKE_KD_STEPS)
    s = check_run_folder(tmp_path / "smoke", channels=3, size=32)
    assert s["teacher"]["arch"] == "resnet20"
    check_kd_loss_fell(kd_losses, recipe)


def test_the_cifar10_bench_needs_the_data_path_and_says_how(tmp_path, capsys):
    assert bench_cli(["--suite", "cifar10", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and "--set data.root=PATH" in err
    assert not any(tmp_path.iterdir())  # nothing ran
