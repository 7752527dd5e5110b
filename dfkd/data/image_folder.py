"""Labelled images from an ImageFolder tree (`<class>/<image>`) or a `.tar` / `.tar.gz` archive of one, with no
unpacking by hand and no `val/` folder needed:

- the class of an image is its folder below whatever leading folders all images share (`train/airplane/0001.jpg`
  in an archive whose every path starts with `train/` is class `airplane`); classes sort by name, which for
  CIFAR-10's folders is CIFAR-10's own label order; images within a class sort by file name;
- every image is decoded once (PIL), to uint8 at the data's size and channels, and cached as one `.npz` file in
  `cache_dir` (default `~/.cache/dfkd`), keyed by the source's path, size and modification time, so later runs
  and epochs never decode again;
- `split_last_per_class` holds out a fixed, class-balanced part: the last `n` images of each class.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dfkd.errors import DfkdError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif")


class UInt8Images(Dataset):
    """(image, label) pairs from uint8 N x H x W x C images: [0,1] float C x H x W out, as every dfkd data set."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].permute(2, 0, 1).float().div_(255), int(self.labels[i])


def load_image_folder(source: str | Path, image_size: int, channels: int,
                      cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images N x H x W x C, int labels N, class names) of a tree or archive; decoded once, then cached."""
    source = Path(source).expanduser()
    if not source.exists():
        raise DfkdError(f"data.root={source} does not exist: point it at an ImageFolder tree (<class>/<image>) or a "
                        f".tar / .tar.gz archive of one")
    cache = Path(cache_dir or Path.home() / ".cache" / "dfkd").expanduser() / f"{source.name}-{_key(source, image_size, channels)}.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["images"], f["labels"], list(f["classes"])
    images, labels, classes = _decode(_entries(source), image_size, channels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, images=images, labels=labels, classes=np.array(classes))
    os.replace(tmp, cache)
    return images, labels, classes


def split_last_per_class(labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): the last `per_class` images of each class are held out."""
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise DfkdError(f"class {c} has {len(idx)} images; cannot hold out {per_class} (data.val_per_class)")
        held.extend(idx[-per_class:].tolist())
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _key(source: Path, image_size: int, channels: int) -> str:
    if source.is_dir():
        stamp = [(str(p.relative_to(source)), p.stat().st_size) for p in sorted(source.rglob("*")) if p.is_file()]
    else:
        st = source.stat()
        stamp = [str(source.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha1(repr((stamp, image_size, channels)).encode()).hexdigest()[:12]


def _entries(source: Path) -> list[tuple[tuple[str, ...], bytes]]:
    """(path parts, file bytes) of every image, from a folder tree or a tar archive."""
    out = []
    if source.is_dir():
        for p in source.rglob("*"):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                out.append((p.relative_to(source).parts, p.read_bytes()))
    else:
        with tarfile.open(source) as tar:  # .tar, .tar.gz, .tgz: tarfile detects the compression
            for m in tar:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    out.append((Path(m.name).parts, tar.extractfile(m).read()))
    return out


def _decode(entries, image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    if not entries:
        raise DfkdError("no images found (looked for " + ", ".join(IMAGE_SUFFIXES) + " files)")
    shared = 0  # leading folders every image shares (e.g. an archive's top-level `train/`)
    while all(len(parts) > shared + 2 for parts, _ in entries) and len({p[shared] for p, _ in entries}) == 1:
        shared += 1
    if any(len(parts) < shared + 2 for parts, _ in entries):
        raise DfkdError("images must sit in one folder per class (<class>/<image>), below any shared folders")
    classes = sorted({parts[shared] for parts, _ in entries})
    index = {c: i for i, c in enumerate(classes)}
    entries = sorted(entries, key=lambda e: (index[e[0][shared]], e[0][shared + 1:]))
    mode = "L" if channels == 1 else "RGB"
    images = np.empty((len(entries), image_size, image_size, channels), dtype=np.uint8)
    for i, (_, data) in enumerate(entries):
        img = Image.open(io.BytesIO(data)).convert(mode)
        if img.size != (image_size, image_size):  # shorter side to image_size, then a centre crop
            scale = image_size / min(img.size)
            img = img.resize((max(image_size, round(img.width * scale)), max(image_size, round(img.height * scale))),
                             Image.BILINEAR)
            left, top = (img.width - image_size) // 2, (img.height - image_size) // 2
            img = img.crop((left, top, left + image_size, top + image_size))
        images[i] = np.asarray(img, dtype=np.uint8).reshape(image_size, image_size, channels)
    labels = np.array([index[parts[shared]] for parts, _ in entries], dtype=np.int64)
    return images, labels, classes
