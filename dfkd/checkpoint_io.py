"""The model file format shared by shipped teachers and exported students, and loading of foreign teacher
checkpoints (Fast-Datafree/CMI `.pth` files, plain state_dicts).

A dfkd model file is a `torch.save`d dict of tensors and plain values only (loads with weights_only=True):
    format, arch, arch_kwargs, num_classes, in_chans, image_size, input_size, resize, mean, std,
    state_dict, recipe (resolved, plain), metrics
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from dfkd.errors import CheckpointError
from dfkd.models import build_model
from dfkd.preprocess import Classifier, Preprocess

FORMAT = "dfkd.model/1"
_PREFIXES = ("module.", "_orig_mod.", "model.")


def clean_state_dict(sd: dict) -> dict:
    """Strip DDP / torch.compile / wrapper prefixes (`module.`, `_orig_mod.`) from every key."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES[:2]:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k.replace("._orig_mod.", ".")] = v
    return out


def build_classifier(arch: str, arch_kwargs: dict, num_classes: int, in_chans: int, image_size: int,
                     input_size: int, resize: str, mean, std) -> Classifier:
    model = build_model(arch, num_classes=num_classes, in_chans=in_chans, **dict(arch_kwargs or {}))
    return Classifier(Preprocess(mean, std, image_size, input_size, resize), model)


def save_model_file(path: str | Path, classifier: Classifier, meta: dict) -> Path:
    """Write `classifier` (preprocess + model) with its rebuild metadata; atomic (tmp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    p = classifier.preprocess
    payload = {"format": FORMAT, **meta, "image_size": p.image_size, "input_size": p.input_size,
               "resize": p.resize, "mean": p.mean.flatten().tolist(), "std": p.std.flatten().tolist(),
               "state_dict": {k: v.detach().cpu().clone() for k, v in clean_state_dict(classifier.model.state_dict()).items()}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True (tensors and plain containers only: never arbitrary pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for corrupt files)
        raise CheckpointError(f"{what} {path} cannot be read: {describe_load_error(path, e)}") from None


def describe_load_error(path: Path, e: Exception) -> str:
    """Why torch.load failed, in words that never invite `weights_only=False` (loading arbitrary pickled code).
    A whole file (a zip archive, or a legacy pickle stream) that the safe loader refuses holds Python objects;
    anything else is truncated, corrupt or not a PyTorch file."""
    import zipfile

    with path.open("rb") as f:
        head = f.read(2)
    whole = zipfile.is_zipfile(path) or head[:1] == b"\x80"
    if whole and ("weights_only" in str(e) or "Unpickler" in str(e)):
        return ("it holds Python objects other than tensors and plain containers, which dfkd does not load "
                "(a pickled whole model, say). Save the model's state_dict() and point at that instead")
    return "it is not a complete PyTorch file: it may be truncated or corrupt; re-create or re-download it"


def load_classifier(path: str | Path) -> Classifier:
    """Rebuild a dfkd model file into an eval-mode `Classifier` taking [0,1] images at native size."""
    ck = read_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dfkd model file (expected format {FORMAT!r}); "
                              "export one with `python -m dfkd.export checkpoints/<run>`")
    clf = build_classifier(ck["arch"], ck.get("arch_kwargs", {}), ck["num_classes"], ck["in_chans"],
                           ck["image_size"], ck["input_size"], ck["resize"], ck["mean"], ck["std"])
    clf.model.load_state_dict(ck["state_dict"])
    return clf.eval()


def extract_state_dict(ck) -> dict:
    """The weights inside a dfkd file, a `{'state_dict': ...}` / `{'model': ...}` wrapper, or a plain state_dict."""
    if isinstance(ck, dict):
        for key in ("state_dict", "model", "net"):
            if key in ck and isinstance(ck[key], dict):
                return clean_state_dict(ck[key])
        if ck and all(isinstance(v, torch.Tensor) for v in ck.values()):
            return clean_state_dict(ck)
    raise CheckpointError("checkpoint holds no state_dict (looked for a dfkd file, a 'state_dict'/'model' entry, "
                          "or a plain name->tensor dict)")


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a teacher's weights from any supported checkpoint into `model`, with a clear error on mismatch."""
    ck = read_checkpoint(path, "teacher checkpoint")
    sd = extract_state_dict(ck)
    missing, unexpected = model.state_dict().keys() - sd.keys(), sd.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}. Check teacher.arch / arch_kwargs.")
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the configured teacher: {str(e).splitlines()[0]} ... Check "
                              "teacher.arch, arch_kwargs and data.num_classes.") from None
    return ck if isinstance(ck, dict) else {}
