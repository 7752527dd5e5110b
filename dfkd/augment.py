"""Augmentation of synthetic images before they reach teacher and student, built from config as a kornia
`AugmentationSequential` (differentiable, runs on the images' device):

    augment:
      - {name: RandomCrop, padding: 4}      # a crop without `size` keeps the images' own size
      - {name: RandomHorizontalFlip}        # not for digits

Any class of `kornia.augmentation` may be named. A crop (RandomCrop, RandomResizedCrop, CenterCrop) written without
`size` crops to the images' own height and width, so one recipe serves every resolution; a crop with a `size`
other than the images' changes what the teacher sees and is refused (kornia would either fail on it or, in older
versions, silently pad the batch out to that size). Augmentation state is never checkpointed (kornia keeps range
buffers in its modules: they are built from config, outside the LightningModule's state)."""
from __future__ import annotations

import torch.nn as nn

# the differentiable augmentation of FastDFKD, CMI and NAYER on CIFAR (their papers' and scripts' setting)
CIFAR_AUGMENT = ({"name": "RandomCrop", "padding": 4}, {"name": "RandomHorizontalFlip"})

CROPS = ("RandomCrop", "RandomResizedCrop", "CenterCrop")


def build_augment(items, image_size: tuple[int, int] | None = None) -> nn.Module:
    """`image_size` (H, W) of the images augmented: the size of every crop written without one."""
    if not items:
        return nn.Identity()
    import kornia.augmentation as K

    ops = []
    for item in items:
        item = dict(item)
        name = item.pop("name")
        if not hasattr(K, name):
            raise ValueError(f"unknown kornia augmentation {name!r} (see kornia.augmentation)")
        if name in CROPS:
            item["size"] = _crop_size(name, item.get("size"), image_size)
        ops.append(getattr(K, name)(**item))
    return K.AugmentationSequential(*ops)


def _crop_size(name: str, size, image_size) -> tuple[int, int]:
    if size is not None:
        size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if image_size is None:
        if size is None:
            raise ValueError(f"augment: {name} needs a `size` when the image size is not known")
        return size
    image_size = tuple(int(s) for s in image_size)
    if size is None:
        return image_size
    if size != image_size:
        raise ValueError(f"augment: {name} size {list(size)} differs from the images' size {list(image_size)}; "
                         f"drop `size` to crop at the images' own size")
    return size
