"""Real images and their splits (the embedded digits, image folders and archives, torchvision sets, FakeData), and
the step-index data set that drives the synthetic loop."""
from __future__ import annotations

from dfkd.data.sets import DATASETS, SCORED_SPLITS, Splits, StepDataset, build_splits, embedded_mnist_splits


def image_shape(data) -> tuple[int, int, int]:
    """(C, H, W) of the native [0,1] images of a `data` config group."""
    return int(data.channels), int(data.image_size), int(data.image_size)


__all__ = ["DATASETS", "SCORED_SPLITS", "Splits", "StepDataset", "build_splits", "embedded_mnist_splits", "image_shape"]
