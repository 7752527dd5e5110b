"""Input preprocessing that travels with a model: [0,1] images at the data set's native size ->
padded/resized to the model's input size -> normalized. Kept inside the module so that exported students
take plain images, and so synthesizers work in [0,1] image space whatever the model expects."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Preprocess(nn.Module):
    def __init__(self, mean, std, image_size: int, input_size: int | None = None, resize: str = "pad"):
        super().__init__()
        if resize not in ("pad", "resize"):
            raise ValueError(f"resize must be 'pad' or 'resize', got {resize!r}")
        self.image_size = int(image_size)
        self.input_size = int(input_size or image_size)
        self.resize = resize
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            if self.resize == "pad" and x.shape[-1] <= self.input_size:
                total = self.input_size - x.shape[-1]
                x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
            else:
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def extra_repr(self):
        return f"image_size={self.image_size}, input_size={self.input_size}, resize={self.resize}"


class Classifier(nn.Sequential):
    """preprocess -> model: takes [0,1] images (N,C,H,W) at native size, returns logits."""

    def __init__(self, preprocess: Preprocess, model: nn.Module):
        super().__init__()
        self.preprocess = preprocess
        self.model = model
