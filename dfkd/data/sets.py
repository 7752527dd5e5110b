"""Data: the embedded MNIST-5k set, torchvision data sets for users who have them, FakeData for tests,
and the step-index data set that drives training on synthetic images.

Every data set yields (image in [0,1] float CxHxW at its native size, int label). Normalization and
resizing to the model's input size live in `dfkd.models.classifier.Preprocess`, inside the models, so exported
students take plain [0,1] images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from dfkd.registry import Registry

EMBEDDED_MNIST = Path(__file__).resolve().parents[1] / "assets" / "mnist5k.npz"
DATASETS = Registry("data set")


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset


def embedded_mnist_splits(val_per_class: int = 100) -> Splits:
    """Real MNIST, 5,000 digits (500 a class), split by a fixed rule: the last `val_per_class` digits of
    each class (in file order) are held out for evaluation only; never used to train a teacher or student."""
    with np.load(EMBEDDED_MNIST) as f:
        images, labels = f["images"], f["labels"].astype(np.int64)
    x = torch.from_numpy(images).float().div_(255).unsqueeze(1)
    y = torch.from_numpy(labels)
    val_idx = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= val_per_class:
            raise ValueError(f"class {c} has {len(idx)} digits; cannot hold out {val_per_class}")
        val_idx.extend(idx[-val_per_class:].tolist())
    val_mask = torch.zeros(len(y), dtype=torch.bool)
    val_mask[val_idx] = True
    return Splits(TensorDataset(x[~val_mask], y[~val_mask]), TensorDataset(x[val_mask], y[val_mask]))


@DATASETS.register("mnist_embedded")
def _mnist_embedded(root=None, val_per_class: int = 100, **_):
    return embedded_mnist_splits(val_per_class)


def _tv(name: str, root: str | None, download: bool, split_kw):
    import torchvision
    from torchvision import transforms as T

    if not root:
        raise ValueError(f"data.root must point at a folder holding {name}; set data.root=/path/to/data "
                         f"(and data.download=true on a machine with internet)")
    cls = getattr(torchvision.datasets, name)
    to_tensor = T.ToTensor()
    try:
        return Splits(cls(root, download=download, transform=to_tensor, **split_kw(True)),
                      cls(root, download=download, transform=to_tensor, **split_kw(False)))
    except RuntimeError as e:
        raise FileNotFoundError(f"{name} not found under {root!r} ({e}). Put it there, or pass "
                                f"data.download=true on a machine with internet.") from None


@DATASETS.register("mnist")
def _mnist(root=None, download=False, **_):
    return _tv("MNIST", root, download, lambda tr: {"train": tr})


@DATASETS.register("fashionmnist")
def _fashion(root=None, download=False, **_):
    return _tv("FashionMNIST", root, download, lambda tr: {"train": tr})


@DATASETS.register("cifar10")
def _cifar10(root=None, download=False, **_):
    return _tv("CIFAR10", root, download, lambda tr: {"train": tr})


@DATASETS.register("cifar100")
def _cifar100(root=None, download=False, **_):
    return _tv("CIFAR100", root, download, lambda tr: {"train": tr})


@DATASETS.register("svhn")
def _svhn(root=None, download=False, **_):
    return _tv("SVHN", root, download, lambda tr: {"split": "train" if tr else "test"})


@DATASETS.register("imagefolder")
def _imagefolder(root=None, image_size: int = 224, channels: int = 3, val_per_class: int | None = None,
                 cache_dir: str | None = None, **_):
    """An ImageFolder tree or a .tar/.tar.gz archive of one (dfkd/data/image_folder.py): with `val_per_class`, the last
    that many images of each class are held out, and everything is decoded once into a cached array. Without it,
    the ImageNet layout `root/train/<class>/*` and `root/val/<class>/*`, read through torchvision."""
    if val_per_class:
        from dfkd.data.image_folder import UInt8Images, load_image_folder, split_last_per_class

        images, labels, _ = load_image_folder(root or "", int(image_size), int(channels), cache_dir)
        train, val = split_last_per_class(labels, int(val_per_class))
        return Splits(UInt8Images(images[train], labels[train]), UInt8Images(images[val], labels[val]))
    from torchvision import datasets, transforms as T

    if not root or not (Path(root) / "train").is_dir():
        raise FileNotFoundError(f"imagefolder needs data.root with train/ and val/ class folders, or "
                                f"data.val_per_class=N to hold out the last N images of each class; got {root!r}")
    tf = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()])
    return Splits(datasets.ImageFolder(str(Path(root) / "train"), tf), datasets.ImageFolder(str(Path(root) / "val"), tf))


@DATASETS.register("fake")
def _fake(num_classes: int = 10, channels: int = 3, image_size: int = 32, size: int = 64, **_):
    """torchvision FakeData: random images, for smoke tests of paper-scale recipes without the data."""
    from torchvision import datasets, transforms as T

    shape = (channels, image_size, image_size)
    mk = lambda n, seed: datasets.FakeData(n, shape, num_classes, T.ToTensor(), random_offset=seed)  # noqa: E731
    return Splits(mk(size, 0), mk(max(size // 4, num_classes), 10_000))


def build_splits(cfg) -> Splits:
    """`cfg` is the `data` config group; `limit_train`/`limit_val` cut sets down for quick checks."""
    kw = {k: v for k, v in dict(cfg).items() if k not in ("name",)}
    splits = DATASETS.build(cfg.name, **kw)
    lt, lv = cfg.get("limit_train"), cfg.get("limit_val")
    return Splits(Subset(splits.train, range(min(lt, len(splits.train)))) if lt else splits.train,
                  Subset(splits.val, range(min(lv, len(splits.val)))) if lv else splits.val)


class StepDataset(Dataset):
    """`length` step indices: the training 'data' of a synthetic loop (Lightning needs a dataloader; under
    DDP its sampler shards the indices so each rank runs length/world_size steps per epoch)."""

    def __init__(self, length: int):
        self.length = int(length)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return i
