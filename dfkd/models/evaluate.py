"""Top-1 accuracy of a classifier (or a black-box teacher: anything that maps [0,1] images to class scores) on a
data set of real images."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int = 500, device="cpu") -> float:
    """Top-1 accuracy of `model` ([0,1] images in; a module or a black-box teacher) on `dataset`."""
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += y.numel()
    if module is not None:
        module.train(was_training)
    return correct / max(total, 1)
