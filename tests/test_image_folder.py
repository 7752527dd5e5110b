"""Image-folder data: a tree, or a .tar/.tar.gz archive of one, with a fixed class-balanced held-out split, decoded
once into a cache. Tiny images made here; nothing outside the repository is needed."""
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from dfkd.runs.config import compose
from dfkd.data import build_splits
from dfkd.errors import DfkdError
from dfkd.data.image_folder import load_image_folder, split_last_per_class

CLASSES = ["truck", "airplane", "cat"]  # sorted: airplane 0, cat 1, truck 2


@pytest.fixture
def tree(tmp_path):
    """train/<class>/NNNN.png, 5 images a class, each filled with a value that names (class, index)."""
    root = tmp_path / "data" / "train"
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(5):
            value = 10 * (sorted(CLASSES).index(c) + 1) + i
            Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(root / c / f"{i:04d}.png")
    return tmp_path / "data"


def archive_of(tree, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
    return path


def test_classes_sort_by_name_and_images_by_file(tree, tmp_path):
    images, labels, classes = load_image_folder(tree, 8, 3, tmp_path / "cache")
    assert classes == ["airplane", "cat", "truck"] and labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert images.shape == (15, 8, 8, 3) and images.dtype == np.uint8
    assert images[:, 0, 0, 0].tolist() == [10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 30, 31, 32, 33, 34]


def test_an_archive_reads_as_its_tree_and_is_decoded_once(tree, tmp_path, monkeypatch):
    archive = archive_of(tree, tmp_path / "train.tar.gz")
    from_tree = load_image_folder(tree, 8, 3, tmp_path / "cache")
    from_archive = load_image_folder(archive, 8, 3, tmp_path / "cache")
    assert np.array_equal(from_tree[0], from_archive[0]) and np.array_equal(from_tree[1], from_archive[1])
    assert len(list((tmp_path / "cache").glob("train.tar.gz-*.npz"))) == 1
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded again instead of using the cache"))
    again = load_image_folder(archive, 8, 3, tmp_path / "cache")
    assert np.array_equal(again[0], from_archive[0]) and again[2] == from_archive[2]


def test_the_last_images_of_each_class_are_held_out(tree, tmp_path):
    _, labels, _ = load_image_folder(tree, 8, 3, tmp_path / "cache")
    train, held = split_last_per_class(labels, 2)
    assert held.tolist() == [3, 4, 8, 9, 13, 14] and len(train) == 9 and not set(train) & set(held)
    with pytest.raises(DfkdError, match="cannot hold out 5"):
        split_last_per_class(labels, 5)


def test_a_recipe_reads_an_archive_through_the_data_group(tree, tmp_path):
    archive = archive_of(tree, tmp_path / "train.tar.gz")
    cfg = compose("fastdfkd_cifar10_wrn40_2", ["data=cifar10_folder", f"data.root={archive}", "data.image_size=8",
                                               "data.val_per_class=2", "data.num_classes=3",
                                               f"data.cache_dir={tmp_path / 'cache'}"])
    splits = build_splits(cfg.data)
    assert len(splits.train) == 9 and len(splits.report) == 6
    x, y = splits.report[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and x.max() <= 1 and y == 0
    assert x[0, 0, 0].item() == pytest.approx(13 / 255)


def test_a_missing_source_says_what_to_give(tmp_path):
    with pytest.raises(DfkdError, match="does not exist.*ImageFolder tree.*archive"):
        load_image_folder(tmp_path / "nope.tar.gz", 8, 3, tmp_path)


def test_a_cifar_teacher_recipe_trains_on_an_archive(tree, tmp_path):
    from dfkd.runs.run import main

    archive = archive_of(tree, tmp_path / "train.tar.gz")
    s = main(compose("teacher_resnet20_cifar10", [f"paths.runs={tmp_path}", "run=t", f"data.root={archive}",
                                                  "data.image_size=8", "data.val_per_class=2", "data.num_classes=3",
                                                  f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1",
                                                  "train.batch_size=3", "trainer.accelerator=cpu"]))
    assert (tmp_path / "t" / "teacher.pt").is_file() and s["splits"]["train"]["images"] == 9
    assert 0 <= s["report_acc"] <= 1
