"""Forward hooks on a frozen teacher: BatchNorm input statistics (for BN-statistics matching) and feature
taps addressed by module path. Hooks are registered on the plain model (never on a DDP wrapper, whose names
carry `module.`), and removed by `close()`."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfkd.losses import bn_stat_loss


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every BatchNorm (incl. SyncBatchNorm) of `model`, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


class BNStatHooks:
    """Records, for each BN layer of `model`, the BN-statistics loss of the batch its input carries
    (DeepInversion eq. 4): per-channel batch mean and biased variance over N,H,W vs. the running statistics.

    Only while `active` (use `with hooks.recording():`), so ordinary forwards cost nothing.
    `sync=True` all-reduces the batch statistics across DDP ranks first (differentiably), so the BN loss sees
    the global batch (NVlabs/DeepInversion#16).

    `momentum` > 0 is FastDFKD's variant: the running statistics are compared with
    (1 - momentum) * batch statistics + momentum * EMA of earlier batches, so the loss matches the statistics
    of the accumulated image set rather than of one batch; `update_ema()` folds the last batch into the EMA."""

    def __init__(self, model: nn.Module, first_multiplier: float = 1.0, sync: bool = False, momentum: float = 0.0):
        self.layers = batchnorm_layers(model)
        if not self.layers:
            raise ValueError(
                f"{type(model).__name__} has no BatchNorm layer, so BN-statistics matching has nothing to match. "
                "Use a teacher with BatchNorm, or set the synthesizer's bn weight to 0.")
        self.weights = [first_multiplier] + [1.0] * (len(self.layers) - 1)
        self.sync = sync
        self.momentum = float(momentum)
        self.ema: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._last_stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.active = False
        self.losses: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for _, m in self.layers]

    def _hook(self, module: _BatchNorm, inputs, output):
        if not self.active:
            return
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        sq = (x * x).mean(dims)
        if self.sync and torch.distributed.is_available() and torch.distributed.is_initialized():
            import torch.distributed.nn.functional as dist_fn

            world = torch.distributed.get_world_size()
            mean = dist_fn.all_reduce(mean) / world
            sq = dist_fn.all_reduce(sq) / world
        var = sq - mean * mean  # biased variance, as BN normalizes with
        i = len(self.losses)
        self._last_stats.append((mean.detach(), var.detach()))
        if self.momentum > 0 and self.ema is not None:
            m = self.momentum
            mean = (1 - m) * mean + m * self.ema[i][0]
            var = (1 - m) * var + m * self.ema[i][1]
        self.losses.append(bn_stat_loss(mean, var, module.running_mean, module.running_var))

    def update_ema(self) -> None:
        """Fold the statistics of the last recorded forward into the EMA (FastDFKD `update_mmt`)."""
        if not self._last_stats:
            return
        if self.ema is None:
            self.ema = [(m.clone(), v.clone()) for m, v in self._last_stats]
        else:
            k = self.momentum
            self.ema = [(k * em + (1 - k) * m, k * ev + (1 - k) * v)
                        for (em, ev), (m, v) in zip(self.ema, self._last_stats)]

    def recording(self):
        hooks = self

        class _Ctx:
            def __enter__(self):
                hooks.losses = []
                hooks._last_stats = []
                hooks.active = True
                return hooks

            def __exit__(self, *exc):
                hooks.active = False

        return _Ctx()

    def loss(self) -> torch.Tensor:
        """Weighted sum over layers of the last recorded forward (first layer times `first_multiplier`)."""
        if len(self.losses) != len(self.layers):
            raise RuntimeError(f"recorded {len(self.losses)} BN layers of {len(self.layers)}; "
                               "run exactly one forward inside `recording()`")
        return sum(w * l for w, l in zip(self.weights, self.losses))

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []


class FeatureTaps:
    """Output (or, with io="input", the first input) of the modules at the given dotted paths, from the last
    forward: `taps[path]`."""

    def __init__(self, model: nn.Module, paths: list[str], io: str = "output"):
        if io not in ("input", "output"):
            raise ValueError(f"io must be 'input' or 'output', got {io!r}")
        modules = dict(model.named_modules())
        missing = [p for p in paths if p not in modules]
        if missing:
            raise KeyError(f"no module at {missing} in {type(model).__name__}; "
                           f"some valid paths: {[n for n in modules if n][:20]}")
        self.io = io
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[p].register_forward_hook(self._make(p)) for p in paths]

    def _make(self, path):
        def hook(module, inputs, output):
            self.outputs[path] = inputs[0] if self.io == "input" else output
        return hook

    def __getitem__(self, path):
        return self.outputs[path]

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def classifier_head(model: nn.Module) -> str:
    """Path of the last nn.Linear of `model`: its input is the penultimate feature."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        from dfkd.errors import DfkdError

        raise DfkdError(f"{type(model).__name__} has no nn.Linear head; set synthesizer.feature_layer to one of its "
                        f"modules: {[n for n, _ in model.named_modules() if n][-6:]}")
    return linears[-1]
