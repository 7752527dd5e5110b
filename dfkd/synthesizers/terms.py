"""What a method's synthesis objective is made of, declared so it can be checked.

Every synthesizer forms its objective as `weighted_total(terms)`: a sum of named terms, each times its weight in
`self.w`. It declares each of them in its class attribute `terms`:

    objective_terms = {"oh": Term("teacher_ce_own_label", "lower", weight="oh"),
                       "a": Term("teacher_feature_magnitude", "raise", weight="a"), ...}

- `measure` names a quantity of a batch of synthetic images (`MEASURES`, below) in which the paper states what
  the term does: DAFL's activation term *raises* the teacher's feature magnitude, DFAD's adversarial term *raises*
  the teacher-student L1 gap, a BN-statistics term *lowers* the distance to the running statistics;
- `way` is "lower" or "raise": which way optimizing the term alone moves that quantity;
- `weight` names the constructor setting that weights the term (None: fixed at 1, e.g. DFAD's only term).

The measures are written from torch primitives here, not from `dfkd.losses` or a method's own code, so a flipped
sign anywhere on the way from a loss function to a synthesizer's step shows as a quantity moving the wrong way
(tests/test_objectives.py checks every declared term of every registered synthesizer; a new synthesizer gets the
check by declaring its terms). A plug-in whose term has no measure here registers one: `MEASURES["name"] = fn`,
`fn(synthesizer, batch) -> float`, evaluated without gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Term:
    measure: str              # a key of MEASURES
    way: str                  # "lower" | "raise": how the term, optimized alone, moves the measure
    weight: str | None = None  # the constructor setting that weights it; None: weight 1

    def __post_init__(self):
        if self.way not in ("lower", "raise"):
            raise ValueError(f"Term.way must be 'lower' or 'raise', got {self.way!r}")


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=1)  # torch's primitive; independence is from dfkd's code, not torch


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(-_log_softmax(logits).gather(1, labels.view(-1, 1)).mean())


def _teacher_logits(syn, batch) -> torch.Tensor:
    return syn.teacher.logits(batch.images)


def _student_logits(syn, batch) -> torch.Tensor:
    with syn.scoring_student() as student:
        return student(batch.images)


def teacher_ce_to_targets(syn, batch) -> float:
    """Cross-entropy of the teacher's prediction against the labels the batch was made for."""
    return _ce(_teacher_logits(syn, batch), batch.targets)


def teacher_ce_own_label(syn, batch) -> float:
    """Cross-entropy of the teacher's prediction against its own top class (low: confident images)."""
    t = _teacher_logits(syn, batch)
    return _ce(t, t.argmax(1))


def _balance(logits: torch.Tensor) -> float:
    p = _log_softmax(logits).exp().mean(0)
    return float(-(p * p.clamp_min(1e-12).log()).sum())


def teacher_class_balance(syn, batch) -> float:
    """Entropy of the batch-mean teacher prediction (high: the batch covers the classes evenly)."""
    return _balance(_teacher_logits(syn, batch))


def student_class_balance(syn, batch) -> float:
    """Entropy of the batch-mean student prediction."""
    return _balance(_student_logits(syn, batch))


def student_ce_to_targets(syn, batch) -> float:
    """Cross-entropy of the student's prediction against the labels the batch was made for."""
    return _ce(_student_logits(syn, batch), batch.targets)


def student_prediction_entropy(syn, batch) -> float:
    """Mean entropy of the student's prediction per image (high: images near its decision boundaries)."""
    log_p = _log_softmax(_student_logits(syn, batch))
    return float(-(log_p.exp() * log_p).sum(1).mean())


def _kl_teacher_student(syn, batch) -> torch.Tensor:
    log_t, log_s = _log_softmax(_teacher_logits(syn, batch)), _log_softmax(_student_logits(syn, batch))
    return (log_t.exp() * (log_t - log_s)).sum(1)


def teacher_student_kl(syn, batch) -> float:
    """KL(teacher || student) per image, batch mean: how far the student is from the teacher on these images."""
    return float(_kl_teacher_student(syn, batch).mean())


def teacher_student_kl_where_agreeing(syn, batch) -> float:
    """KL(teacher || student) summed over the images on which both pick the same class, over the batch size
    (what the decision-adversarial term of FastDFKD, CMI and NAYER raises)."""
    t, s = _teacher_logits(syn, batch), _student_logits(syn, batch)
    agree = (t.argmax(1) == s.argmax(1)).float()
    return float((agree * _kl_teacher_student(syn, batch)).mean())


def teacher_student_l1(syn, batch) -> float:
    """Mean absolute difference between student and teacher logits."""
    return float((_student_logits(syn, batch) - _teacher_logits(syn, batch)).abs().mean())


def teacher_student_l1_of_answers(syn, batch) -> float:
    """Mean absolute difference between student logits and the teacher's logits as recovered from its
    probabilities (log p minus its mean over classes), what a black-box method can compare."""
    log_p = _log_softmax(_teacher_logits(syn, batch))
    return float((_student_logits(syn, batch) - (log_p - log_p.mean(1, keepdim=True))).abs().mean())


def teacher_student_js(syn, batch, tau: float = 3.0) -> float:
    """Jensen-Shannon divergence between teacher and student predictions at temperature tau (DeepInversion's
    ADI competition raises it)."""
    p = _log_softmax(_teacher_logits(syn, batch) / tau).exp()
    q = _log_softmax(_student_logits(syn, batch) / tau).exp()
    m = (p + q) / 2
    kl = lambda a: (a * (a.clamp_min(1e-12).log() - m.clamp_min(1e-12).log())).sum(1)  # noqa: E731
    return float((kl(p) / 2 + kl(q) / 2).mean())


def _module_inputs(model: nn.Module, kind, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    seen, handles = [], []
    for m in model.modules():
        if isinstance(m, kind):
            handles.append(m.register_forward_hook(lambda mod, i, o: seen.append((mod, i[0]))))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def bn_distance(syn, batch) -> float:
    """Sum over the teacher's BatchNorm layers of the distances between the batch's channel means and variances
    at the layer's input and the layer's running statistics (low: images the teacher's BN layers find typical)."""
    total = 0.0
    for bn, x in _module_inputs(syn.teacher.module, nn.modules.batchnorm._BatchNorm, batch.images):
        dims = [0] + list(range(2, x.dim()))
        total += float((x.mean(dims) - bn.running_mean).pow(2).sum().sqrt()
                       + (x.var(dims, unbiased=False) - bn.running_var).pow(2).sum().sqrt())
    return total


def teacher_feature_magnitude(syn, batch) -> float:
    """Mean absolute value of the input of the teacher's last Linear layer (its penultimate features)."""
    return float(_module_inputs(syn.teacher.module, nn.Linear, batch.images)[-1][1].abs().mean())


def _neighbour_diffs(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :],
            x[..., 1:, 1:] - x[..., :-1, :-1], x[..., 1:, :-1] - x[..., :-1, 1:]]


def roughness(syn, batch) -> float:
    """Mean absolute difference between neighbouring pixels, four directions (low: smooth images)."""
    return float(sum(d.abs().mean() for d in _neighbour_diffs(batch.images)))


def roughness_l2(syn, batch) -> float:
    """Root of the summed squared differences between neighbouring pixels, four directions."""
    return float(sum(d.pow(2).sum().sqrt() for d in _neighbour_diffs(batch.images)))


def image_norm(syn, batch) -> float:
    """Per-image Euclidean norm of the [0,1] pixels, batch mean."""
    return float(batch.images.flatten(1).pow(2).sum(1).sqrt().mean())


def normalized_image_norm(syn, batch) -> float:
    """Per-image Euclidean norm of the pixels in the teacher's normalized input space, batch mean (low: images
    close to the data mean)."""
    x = (batch.images - syn.data_mean) / syn.data_std
    return float(x.flatten(1).pow(2).sum(1).sqrt().mean())


def image_spread(syn, batch) -> float:
    """Mean absolute pixel difference over all pairs of images of the batch (high: diverse images)."""
    x = batch.images.flatten(1)
    return float((x[:, None] - x[None]).abs().mean())


def instance_similarity(syn, batch) -> float:
    """Mean cosine similarity between different images' instance features in the teacher (the spatial means of
    every BatchNorm layer's input, concatenated; CMI's instance features): low when the images are told apart."""
    feats = [x.flatten(2).mean(2) if x.dim() > 2 else x
             for _, x in _module_inputs(syn.teacher.module, nn.modules.batchnorm._BatchNorm, batch.images)]
    f = torch.cat(feats, 1)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = f @ f.t()
    n = f.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


MEASURES: dict[str, Callable] = {f.__name__: f for f in (
    teacher_ce_to_targets, teacher_ce_own_label, teacher_class_balance, student_class_balance,
    student_ce_to_targets, student_prediction_entropy, teacher_student_kl, teacher_student_kl_where_agreeing,
    teacher_student_l1, teacher_student_l1_of_answers,
    teacher_student_js, bn_distance, teacher_feature_magnitude, roughness, roughness_l2,
    image_norm, normalized_image_norm, image_spread, instance_similarity)}


def measure(syn, name: str, batch) -> float:
    """`MEASURES[name]` of `batch` for the synthesizer `syn` (attached), without gradient."""
    if name not in MEASURES:
        raise KeyError(f"no measure {name!r}: declare one of {sorted(MEASURES)} or register yours in "
                       f"dfkd.synthesizers.terms.MEASURES")
    with torch.no_grad():
        return MEASURES[name](syn, batch)
