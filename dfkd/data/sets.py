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


SCORED_SPLITS = ("tune", "report")  # the splits a run scores its student on, in this order
TUNE_DRAW_SEED = 20201  # the tuning split's draw: fixed, so every run and recipe tunes on the same images


@dataclass(frozen=True)
class Splits:
    """Real images in three roles, never mixed:

    - `train`: what a teacher is trained on (task: teacher); a distillation never trains on it;
    - `tune`: a fixed part of `train` (the teacher's own training images, `data.tune_size` of them), scored for
      every choice: `best.ckpt`, the chance guard, the teacher check, and recipe settings; never reported;
    - `report`: held-out images, scored only for the figures a run, the README and the benchmark publish.

    A data set's builder gives `train` and `report`; `build_splits` draws `tune`."""
    train: Dataset
    report: Dataset
    tune: Dataset | None = None

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "tune": len(self.tune) if self.tune is not None else 0,
                "report": len(self.report)}


def embedded_mnist_splits(val_per_class: int = 100) -> Splits:
    """Real MNIST, 5,000 digits (500 a class), split by a fixed rule: the last `val_per_class` digits of
    each class (in file order) are held out as the reporting split; never used to train a teacher or student, nor
    for any choice."""
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
    return Splits(train=TensorDataset(x[~val_mask], y[~val_mask]), report=TensorDataset(x[val_mask], y[val_mask]))


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
        return Splits(train=cls(root, download=download, transform=to_tensor, **split_kw(True)),
                      report=cls(root, download=download, transform=to_tensor, **split_kw(False)))
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
        return Splits(train=UInt8Images(images[train], labels[train]), report=UInt8Images(images[val], labels[val]))
    from torchvision import datasets, transforms as T

    if not root or not (Path(root) / "train").is_dir():
        raise FileNotFoundError(f"imagefolder needs data.root with train/ and val/ class folders, or "
                                f"data.val_per_class=N to hold out the last N images of each class; got {root!r}")
    tf = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()])
    return Splits(train=datasets.ImageFolder(str(Path(root) / "train"), tf),
                  report=datasets.ImageFolder(str(Path(root) / "val"), tf))


@DATASETS.register("fake")
def _fake(num_classes: int = 10, channels: int = 3, image_size: int = 32, size: int = 64, **_):
    """torchvision FakeData: random images, for smoke tests of paper-scale recipes without the data."""
    from torchvision import datasets, transforms as T

    shape = (channels, image_size, image_size)
    mk = lambda n, seed: datasets.FakeData(n, shape, num_classes, T.ToTensor(), random_offset=seed)  # noqa: E731
    return Splits(train=mk(size, 0), report=mk(max(size // 4, num_classes), 10_000))


def build_splits(cfg) -> Splits:
    """`cfg` is the `data` config group: its data set's train and reporting splits, and the tuning split drawn from
    the training images (`tune_size` of them, a fixed draw: the same images in every run and recipe).
    `limit_train` / `limit_val` cut the sets down for quick checks (`limit_val` both scored splits)."""
    kw = {k: v for k, v in dict(cfg).items() if k not in ("name", "tune_size")}
    built = DATASETS.build(cfg.name, **kw)
    tune = tuning_subset(built.train, int(cfg.get("tune_size", 1000)))
    lt, lv = cfg.get("limit_train"), cfg.get("limit_val")
    cut = lambda ds, n: Subset(ds, range(min(n, len(ds)))) if n else ds  # noqa: E731
    return Splits(train=cut(built.train, lt), report=cut(built.report, lv), tune=cut(tune, lv))


def tuning_subset(train: Dataset, size: int) -> Dataset:
    """`size` images of `train` drawn once with a fixed seed (independent of the run's), in index order."""
    if size < 1:
        raise ValueError(f"data.tune_size must be at least 1 (the tuning split scores best.ckpt and the guards), "
                         f"got {size}")
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(TUNE_DRAW_SEED))[:size]
    return Subset(train, idx.sort().values.tolist())


class StepDataset(Dataset):
    """`length` step indices: the training 'data' of a synthetic loop (Lightning needs a dataloader; under
    DDP its sampler shards the indices so each rank runs length/world_size steps per epoch)."""

    def __init__(self, length: int):
        self.length = int(length)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return i
