"""A tier's student-side protocol (recipes/protocol/*.yaml): what every method recipe of the tier shares, so that
methods differ only in how they synthesize. A recipe joins a tier with `- protocol: NAME` in its defaults; any
student-side setting it keeps otherwise is listed in `protocol.exceptions` with its paper's reason:

    protocol:
      exceptions:
        kd_loss: "DFAD eq. 2: the student minimizes the L1 distance of logits"

`deviations(cfg)` is the set of student-side settings where the recipe differs from its tier; tests/test_config.py
requires it to equal the declared exceptions, each with a reason."""
from __future__ import annotations

import functools

from omegaconf import DictConfig, OmegaConf

# the student side: optimizer and schedule, KD loss and temperature, weight averaging, KD-batch augmentation,
# batch size, feature transfer and the number of student steps
DISTILL_KEYS = ("kd_loss", "tau", "optimizer", "scheduler", "milestones", "gamma", "ema_decay", "batch_size",
                "grad_clip", "attention")
STUDENT_SIDE = (*DISTILL_KEYS, "augment", "student_steps")


def student_steps(cfg: DictConfig) -> int:
    """Student updates in a full run: the iterations after the synthesis-only ones, times `kd_steps`."""
    d = cfg.distill
    return (int(d.epochs) * int(d.iterations_per_epoch) - int(d.synthesis_only_iterations)) * int(d.kd_steps)


def student_side(cfg: DictConfig) -> dict:
    d = OmegaConf.to_container(cfg.distill, resolve=True)
    side = {k: d.get(k) for k in DISTILL_KEYS}
    if side["scheduler"] != "multistep":  # milestones and gamma mean nothing to another schedule
        side.pop("milestones"), side.pop("gamma")
    side["augment"] = OmegaConf.to_container(cfg.augment, resolve=True)
    side["student_steps"] = student_steps(cfg)
    return side


@functools.lru_cache(maxsize=None)
def protocol_config(name: str) -> DictConfig:
    """The primary config with the tier's protocol alone: its student side (read only; composed once)."""
    from dfkd.runs.config import PRIMARY, _compose_raw

    return _compose_raw(PRIMARY, [f"+protocol={name}"])


def deviations(cfg: DictConfig) -> dict[str, tuple]:
    """{setting: (the recipe's value, the tier's)} for every student-side setting the recipe sets otherwise."""
    if not cfg.protocol.name:
        return {}
    mine, tier = student_side(cfg), student_side(protocol_config(cfg.protocol.name))
    return {k: (mine.get(k), tier.get(k)) for k in STUDENT_SIDE if mine.get(k) != tier.get(k)}
