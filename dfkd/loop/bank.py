"""Sample bank: a ring buffer of synthetic images (and their targets: sampled labels, or the teacher's logits of a
replay memory) that the student trains on. Images are stored as uint8 (like the PNG pools of Fast-Datafree/CMI, 4x
smaller, for images in [0, 1]), fp16 or fp32; saved in checkpoints as plain tensors, so a resumed run trains on
the same images."""
from __future__ import annotations

import torch

_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}


class SampleBank:
    def __init__(self, capacity: int, dtype: str = "uint8"):
        if dtype not in _DTYPES:
            raise ValueError(f"bank.dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        if capacity <= 0:
            raise ValueError(f"bank.capacity must be positive, got {capacity}")
        self.capacity, self.dtype = int(capacity), dtype
        self.images: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self.size = 0   # filled slots
        self.head = 0   # next slot to write
        self.added = 0  # images ever added
        self._weights: tuple[int, torch.Tensor] | None = None  # (added when computed, balancing weights)

    def __len__(self):
        return self.size

    def _encode(self, x):
        return (x.clamp(0, 1) * 255).round().to(torch.uint8) if self.dtype == "uint8" else x.to(_DTYPES[self.dtype])

    def _decode(self, x):
        return x.float() / 255 if self.dtype == "uint8" else x.float()

    def add(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        images = images.detach()
        n = images.shape[0]
        if self.images is None:
            self.images = torch.zeros((self.capacity, *images.shape[1:]), dtype=_DTYPES[self.dtype], device=images.device)
            self.targets = _empty_targets(self.capacity, targets, images.device)
        idx = (self.head + torch.arange(n, device=images.device)) % self.capacity
        self.images[idx] = self._encode(images)
        self.targets[idx] = targets.detach().to(self.targets.dtype) if targets is not None else -1
        self.head = (self.head + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.added += n

    def sample(self, n: int, generator: torch.Generator, balanced: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """n rows drawn with replacement: uniformly, or (`balanced`) each class as often as every other present
        class, a row of a class drawn uniformly within it (the class: the label, or the argmax of a logit row)."""
        if self.size == 0:
            raise RuntimeError("the sample bank is empty: synthesize before sampling")
        if balanced:
            idx = torch.multinomial(self._balancing_weights().to(generator.device), n, replacement=True,
                                    generator=generator)
        else:
            idx = torch.randint(self.size, (n,), generator=generator, device=generator.device)
        idx = idx.to(self.images.device)
        return self._decode(self.images[idx]), self.targets[idx]

    def _balancing_weights(self) -> torch.Tensor:
        """1 / (rows of its class) for each filled row. A replay memory is sampled by many KD steps between two
        additions, so the weights (an argmax over every stored logit row) are kept until the next add."""
        if self._weights is None or self._weights[0] != self.added:
            labels = self.targets[: self.size]
            labels = labels.argmax(1) if labels.is_floating_point() else labels.clamp_min(0)
            self._weights = (self.added, 1.0 / torch.bincount(labels).float()[labels])
        return self._weights[1]

    def state_dict(self) -> dict:
        keep = self.size
        return {"capacity": self.capacity, "dtype": self.dtype, "size": self.size, "head": self.head,
                "added": self.added,
                "images": None if self.images is None else self.images[:keep].cpu().clone(),
                "targets": None if self.targets is None else self.targets[:keep].cpu().clone()}

    def load_state_dict(self, state: dict, device=None) -> None:
        if state["dtype"] != self.dtype:
            raise ValueError(f"checkpoint bank dtype {state['dtype']} != configured {self.dtype}")
        self.size, self.head, self.added = state["size"], state["head"], state["added"]
        self._weights = None
        if state["images"] is None:
            self.images = self.targets = None
            return
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint bank capacity {state['capacity']} != configured {self.capacity}")
        imgs = state["images"]
        self.images = torch.zeros((self.capacity, *imgs.shape[1:]), dtype=imgs.dtype, device=device)
        self.targets = _empty_targets(self.capacity, state["targets"], device)
        self.images[: self.size] = imgs.to(device)
        self.targets[: self.size] = state["targets"].to(device)


def _empty_targets(capacity: int, like: torch.Tensor | None, device) -> torch.Tensor:
    """Class labels (long, -1 for none) by default; a float row per image (teacher logits) when given those."""
    if like is None or not like.is_floating_point():
        return torch.full((capacity,), -1, dtype=torch.long, device=device)
    return torch.zeros((capacity, *like.shape[1:]), dtype=like.dtype, device=device)
