"""Augmentation of synthetic images before they reach teacher and student, built from config as a kornia
`AugmentationSequential` (differentiable, runs on the images' device):

    augment:
      - {name: RandomAffine, degrees: 10, translate: [0.1, 0.1], p: 1.0}
      - {name: RandomHorizontalFlip}        # not for digits

Any class of `kornia.augmentation` may be named. Augmentation state is never checkpointed (kornia keeps
range buffers in its modules: they are built from config, outside the LightningModule's state)."""
from __future__ import annotations

import torch.nn as nn


# the differentiable augmentation of FastDFKD, CMI and NAYER on CIFAR (their papers' and scripts' setting)
CIFAR_AUGMENT = ({"name": "RandomCrop", "size": [32, 32], "padding": 4}, {"name": "RandomHorizontalFlip"})


def build_augment(items) -> nn.Module:
    if not items:
        return nn.Identity()
    import kornia.augmentation as K

    ops = []
    for item in items:
        item = dict(item)
        name = item.pop("name")
        if not hasattr(K, name):
            raise ValueError(f"unknown kornia augmentation {name!r} (see kornia.augmentation)")
        ops.append(getattr(K, name)(**item))
    return K.AugmentationSequential(*ops)
