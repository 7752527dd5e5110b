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
from dfkd.models.classifier import Classifier, Preprocess

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
    atomic_save(payload, path)
    return path


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` to a temporary file, then rename: a crash or a full disk never leaves half a file in place of a
    whole one (the temporary file is removed when the write fails)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj, path: Path) -> None:
    """torch.save, atomically (`atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """torch.load with weights_only=True (tensors and plain containers only: never arbitrary pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for corrupt files)
        # the message never invites `weights_only=False` (loading arbitrary pickled code)
        if holds_pickled_objects(path, e):
            raise CheckpointError(f"{what} {path} cannot be read: it holds Python objects other than tensors and "
                                  "plain containers, which dfkd does not load (a pickled whole model, say). Save the "
                                  "model's state_dict() and point at that instead", pickled_objects=True) from None
        raise CheckpointError(f"{what} {path} cannot be read: it is not a complete PyTorch file: it may be truncated "
                              "or corrupt; re-create or re-download it") from None


def holds_pickled_objects(path: Path, e: Exception) -> bool:
    """Whether torch.load's safe loader refused a whole file (a zip archive, or a legacy pickle stream) for the
    Python objects in it; anything else is truncated, corrupt or not a PyTorch file."""
    import zipfile

    with path.open("rb") as f:
        head = f.read(2)
    whole = zipfile.is_zipfile(path) or head[:1] == b"\x80"
    return whole and ("weights_only" in str(e) or "Unpickler" in str(e))


def load_classifier(path: str | Path) -> Classifier:
    """Rebuild a dfkd model file into an eval-mode `Classifier` taking [0,1] images at native size."""
    ck = read_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dfkd model file (expected format {FORMAT!r}); "
                              "export one with `python -m dfkd.runs.export checkpoints/<run>`")
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


def load_weights(model: nn.Module, path: str | Path, trust_pickle: bool = False, arch: str = "") -> tuple[nn.Module, dict]:
    """Load a teacher's weights from any supported file into `model`: a dfkd model file, a state_dict (`module.`,
    `_orig_mod.` and a common `model.` prefix stripped), or, with `trust_pickle`, a whole pickled module (which
    then replaces `model`). Returns (model, the file's metadata)."""
    path = Path(path)
    try:
        ck = read_checkpoint(path, "teacher checkpoint")
    except CheckpointError as e:
        if not e.pickled_objects:
            raise
        if not trust_pickle:
            raise CheckpointError(f"{e}; or, if you trust the file, pass teacher.trust_pickle=true (loading it "
                                  f"runs code stored in it)", pickled_objects=True) from None
        import warnings

        warnings.warn(f"teacher.trust_pickle=true: unpickling {path}, which can run arbitrary code stored in it",
                      stacklevel=2)
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(ck, nn.Module):
            return ck, {}
    sd = _strip_common_prefix(extract_state_dict(ck), model.state_dict().keys())
    missing, unexpected = model.state_dict().keys() - sd.keys(), sd.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit teacher.arch={arch or type(model).__name__}: the model expects "
                              f"{sorted(missing)[:4]} (and {max(len(missing) - 4, 0)} more) that the file lacks, "
                              f"the file has {sorted(unexpected)[:4]} (and {max(len(unexpected) - 4, 0)} more) that the "
                              f"model lacks. {_likely_cause(sd.keys(), arch)}")
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line][:3]
        raise CheckpointError(f"{path} does not fit teacher.arch={arch}: {'; '.join(lines) or e}. Check "
                              "teacher.arch_kwargs, data.num_classes and data.channels.") from None
    return model, ck if isinstance(ck, dict) else {}


def _strip_common_prefix(sd: dict, wanted) -> dict:
    """Drop a prefix that every key carries and the model's keys do not (`model.`, `net.`: wrapper modules)."""
    wanted = set(wanted)
    first = next(iter(sd), "")
    if "." in first and not (sd.keys() & wanted):
        prefix = first.split(".")[0] + "."
        if all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _likely_cause(keys, arch: str) -> str:
    keys = set(keys)
    if {"conv1.weight", "fc.weight"} <= keys and any(k.startswith("layer1.") for k in keys):
        guess = "It looks like a torchvision (or timm) ResNet: teacher.arch=torchvision:resnet18 (or the depth it has)"
    elif any(k.startswith(("blocks.", "stem.", "head.")) for k in keys):
        guess = "It looks like a timm model: teacher.arch=timm:NAME"
    else:
        guess = "It was saved from another architecture"
    return (f"{guess}; a class of your own is teacher.arch=package.module:factory. dfkd's own names (like "
            f"'{arch}') are its CIFAR definitions.")
