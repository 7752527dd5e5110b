"""Tucker-2 compression of convolutions (Kim et al., ICLR 2016), the student of KegNet (Yoo et al. 2019).

A KxK convolution with weight W (O, I, K, K) becomes
    1x1 conv I -> r_in   (U_in^T)  ->  KxK conv r_in -> r_out (core)  ->  1x1 conv r_out -> O (U_out, + bias)
initialized by HOSVD: U_out / U_in are the leading left singular vectors of the mode-0 / mode-1 unfoldings and
core = W x_0 U_out^T x_1 U_in^T. Ranks are given, a fraction of the channels, or estimated per mode by
empirical variational Bayes matrix factorization (EVBMF, Nakajima et al., JMLR 2013), as in KegNet.

`tucker` (registered model) rebuilds the *structure* from recorded ranks, so an exported compressed student
loads from its file alone.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from dfkd.models.registry import MODELS


def _golden_min(f, lo: float, hi: float, iters: int = 100) -> float:
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def evbmf_rank(y: torch.Tensor) -> int:
    """Rank of the EVBMF solution of matrix `y` with the noise variance estimated (Nakajima et al. 2013, Thm. 2-3)."""
    y = y.detach().double()
    if y.shape[0] > y.shape[1]:
        y = y.T
    L, M = y.shape
    s = torch.linalg.svdvals(y)
    alpha = L / M
    tau_bar = 2.5129 * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    h_ub = max(0, min(math.ceil(L / (1 + alpha)) - 1, L) - 1)
    upper = float((s ** 2).sum()) / (L * M)
    lower = max(float(s[h_ub + 1] ** 2) / (M * x_bar) if h_ub + 1 < L else 0.0,
                float((s[h_ub + 1:] ** 2).mean()) / M if h_ub + 1 < L else 0.0, 1e-12)

    def objective(sigma2: float) -> float:
        x = s ** 2 / (M * sigma2)
        big, small = x[x > x_bar], x[x <= x_bar]
        tau = 0.5 * (big - (1 + alpha) + torch.sqrt((big - (1 + alpha)) ** 2 - 4 * alpha))
        return float((small - torch.log(small)).sum() + (big - tau).sum() + torch.log((tau + 1) / big).sum()
                     + alpha * torch.log(tau / alpha + 1).sum())

    sigma2 = _golden_min(objective, lower, max(upper, lower * 1.0001))
    threshold = math.sqrt(M * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    return max(1, int((s > threshold).sum()))


def _unfold(w: torch.Tensor, mode: int) -> torch.Tensor:
    return w.movedim(mode, 0).reshape(w.shape[mode], -1)


def estimate_ranks(conv: nn.Conv2d, rank) -> tuple[int, int]:
    """(r_in, r_out) for `conv` from "vbmf", a fraction of the channels, or an explicit [r_in, r_out]."""
    o, i = conv.out_channels, conv.in_channels
    if rank == "vbmf":
        w = conv.weight.detach()
        return min(i, evbmf_rank(_unfold(w, 1))), min(o, evbmf_rank(_unfold(w, 0)))
    if isinstance(rank, (int, float)) and not isinstance(rank, bool) and 0 < rank <= 1:
        return max(1, round(i * rank)), max(1, round(o * rank))
    r_in, r_out = rank
    return int(r_in), int(r_out)


def tucker2_layers(conv: nn.Conv2d, r_in: int, r_out: int, init: bool = True) -> nn.Sequential:
    """The three convolutions replacing `conv`; HOSVD-initialized from its weights when `init`."""
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    core = nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False)
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
    if init:
        w = conv.weight.detach().double()
        u_out = torch.linalg.svd(_unfold(w, 0), full_matrices=False)[0][:, :r_out]   # O x r_out
        u_in = torch.linalg.svd(_unfold(w, 1), full_matrices=False)[0][:, :r_in]     # I x r_in
        core_w = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
        with torch.no_grad():
            first.weight.copy_(u_in.T.reshape(r_in, conv.in_channels, 1, 1).float())
            core.weight.copy_(core_w.float())
            last.weight.copy_(u_out.reshape(conv.out_channels, r_out, 1, 1).float())
            if conv.bias is not None:
                last.bias.copy_(conv.bias.detach())
    return nn.Sequential(first, core, last)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def apply_tucker(model: nn.Module, ranks: dict[str, list[int]], init: bool) -> nn.Module:
    for path, (r_in, r_out) in ranks.items():
        conv = model.get_submodule(path)
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise ValueError(f"tucker: {path} is {type(conv).__name__}, not a dense nn.Conv2d")
        _set_module(model, path, tucker2_layers(conv, r_in, r_out, init))
    return model


def compress(model: nn.Module, layers: list[str] | None = None, rank="vbmf",
             in_chans: int | None = None) -> tuple[nn.Module, dict]:
    """A Tucker-2-compressed copy of `model` (weights from HOSVD) and the ranks chosen per layer.
    `layers` default: every dense KxK (K > 1) convolution but those reading the image (`in_channels == in_chans`):
    a rank below the 1-3 image channels would let the student see one mix of the colours (a CIFAR ResNet-20
    compressed so starts at 21 %), and the saving there is a few hundred weights. Name such a layer in `layers`
    to compress it anyway."""
    layers = layers or [n for n, m in model.named_modules()
                        if isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) > 1
                        and m.in_channels != in_chans]
    ranks = {p: list(estimate_ranks(model.get_submodule(p), rank)) for p in layers}
    return apply_tucker(copy.deepcopy(model), ranks, init=True), ranks


@MODELS.register("tucker")
def tucker(num_classes=10, in_chans=3, base: str = "resnet8", base_kwargs: dict | None = None,
           ranks: dict | None = None, **_):
    """Structure of a Tucker-compressed `base` with recorded `ranks` (weights come from a checkpoint)."""
    from dfkd.models import build_model

    if not ranks:
        raise ValueError("tucker students are made from the teacher: set student.arch=tucker with "
                         "student.arch_kwargs.layers / rank, and dfkd records the ranks it chose")
    model = build_model(base, num_classes=num_classes, in_chans=in_chans, **dict(base_kwargs or {}))
    return apply_tucker(model, {k: list(v) for k, v in ranks.items()}, init=False)
