"""The teacher of a composed recipe, checked against the data it will be asked about: a model seen whole
(`teacher.access=white`), or a black box that answers with scores or labels only (a local file wrapped, or
`teacher.endpoint`); and the held-out check that stops a run whose teacher is prepared wrongly."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from dfkd.data import image_shape
from dfkd.errors import RunError
from dfkd.models.classifier import Classifier
from dfkd.models.files import build_classifier, load_weights
from dfkd.teachers.black_box import BlackBoxTeacher, access_rank, local_answers
from dfkd.teachers.white_box import WhiteBoxTeacher


def teacher_normalization(cfg: DictConfig) -> tuple[list, list]:
    """The teacher's own input mean/std (`teacher.mean/std`), else the data set's."""
    return _normalization(cfg.teacher, cfg.data)


def _normalization(model_cfg: DictConfig, data: DictConfig) -> tuple[list, list]:
    return (list(model_cfg.mean if model_cfg.mean is not None else data.mean),
            list(model_cfg.std if model_cfg.std is not None else data.std))


def build_model_of(model_cfg: DictConfig, data: DictConfig) -> Classifier:
    """A classifier (preprocessing with the teacher's own normalization + network) from a `teacher` group entry,
    at random initialization: the same for training a teacher and for distilling from it."""
    if not model_cfg.arch:
        raise RunError("teacher.arch is not set: a dfkd name (resnet8, wrn40_2, ...), timm:NAME, torchvision:NAME "
                       "or package.module:factory (README, 'Bring your own teacher')")
    return build_classifier(model_cfg.arch, model_cfg.arch_kwargs or {}, data.num_classes, data.channels,
                            data.image_size, model_cfg.input_size or data.image_size, model_cfg.resize,
                            *_normalization(model_cfg, data))


def build_teacher(cfg: DictConfig) -> WhiteBoxTeacher | BlackBoxTeacher:
    """The frozen teacher from `cfg.teacher`, checked against the data it will be asked about: the model itself
    (`teacher.access=white`, as a `WhiteBoxTeacher`), or a `BlackBoxTeacher` that answers with scores or labels
    only (a local checkpoint wrapped, or `teacher.endpoint`)."""
    t, d = cfg.teacher, cfg.data
    access_rank(t.access)
    if t.access == "white" and (t.endpoint or t.max_queries is not None or t.top_k is not None):
        what = ("teacher.endpoint" if t.endpoint else
                "teacher.max_queries" if t.max_queries is not None else "teacher.top_k")
        raise RunError(f"{what} is for a black-box teacher, and teacher.access=white: set teacher.access=scores "
                       f"(probabilities) or teacher.access=label (the predicted class only)")
    if t.endpoint:
        return _remote_teacher(cfg)
    clf = build_model_of(t, d)
    clf.recorded_acc = None  # the accuracy on held-out images the teacher file records, if any
    if t.checkpoint:
        path = Path(t.checkpoint)
        if not path.is_file():
            hint = (f" Create it with `python train.py recipe={t.train_recipe}` and pass "
                    f"teacher.checkpoint=<paths.runs>/{t.train_recipe}/teacher.pt." if t.train_recipe else "")
            raise RunError(f"teacher checkpoint {path} not found.{hint} Or set teacher.checkpoint=/path/to/file.")
        clf.model, meta = load_weights(clf.model, path, t.trust_pickle, t.arch)
        metrics = meta.get("metrics") or {}
        clf.recorded_acc = metrics.get("report_acc", metrics.get("heldout_acc"))  # files before the three splits
        want = {"num_classes": d.num_classes, "in_chans": d.channels, "image_size": d.image_size}
        for key, value in want.items():
            if key in meta and meta[key] != value:
                raise RunError(f"teacher {path} was trained with {key}={meta[key]} but data '{d.name}' has "
                               f"{value}; pick the teacher that matches the data (teacher=... / data=...).")
    elif not t.random_init:
        raise RunError("teacher.checkpoint is not set. Point it at the teacher's weights "
                       "(teacher.random_init=true builds a random teacher, for smoke tests only).")
    clf.eval().requires_grad_(False)
    with torch.no_grad():
        try:
            out = clf(torch.rand(2, *image_shape(d)))
        except RuntimeError as e:
            raise RunError(f"teacher {t.arch} cannot take {d.channels}x{d.image_size}x{d.image_size} images of "
                           f"data '{d.name}': {e}") from None
    if out.shape[1] != d.num_classes:
        raise RunError(f"teacher predicts {out.shape[1]} classes but data '{d.name}' has {d.num_classes}")
    if t.access != "white":
        return BlackBoxTeacher(local_answers(clf), t.access, d.num_classes, t.top_k, t.max_queries)
    return WhiteBoxTeacher(clf)


def _remote_teacher(cfg: DictConfig) -> BlackBoxTeacher:
    """`teacher.endpoint`: a service or a callable, asked once about two images before anything runs."""
    from dfkd.teachers.remote import endpoint_answers

    t, d = cfg.teacher, cfg.data
    answer = endpoint_answers(str(t.endpoint), t.endpoint_format, float(t.timeout_s), int(t.retries))
    teacher = BlackBoxTeacher(answer, t.access, d.num_classes, t.top_k, t.max_queries)
    with teacher.counting_as("startup_check"):
        teacher(torch.rand(2, *image_shape(d)))  # a wrong shape or an unreachable service fails here, named
    return teacher


def check_teacher_accuracy(cfg: DictConfig, teacher, acc: float, images: int) -> None:
    """Stop before any synthesis when the teacher scores poorly on the tuning split (below halfway from chance to
    perfect), or far below what its file records: almost always preprocessing that differs from the teacher's
    training. (The tuning split is part of the teacher's training images, so a sound teacher scores at least its
    recorded held-out accuracy there.)"""
    chance = 1.0 / int(cfg.data.num_classes)
    recorded = getattr(teacher, "recorded_acc", None)
    # below halfway from chance to perfect (55 % for 10 classes), or 10 points under what its file says
    low = acc < chance + 0.5 * (1 - chance) or (recorded is not None and acc < recorded - 0.10)
    if not cfg.teacher.check_accuracy or cfg.teacher.random_init or not low:
        return
    mean, std = teacher_normalization(cfg)
    was = f" (its file records {100 * recorded:.1f} %)" if recorded is not None else ""
    raise RunError(f"the teacher scores {100 * acc:.1f} % on the {images} tuning images of '{cfg.data.name}'{was}: "
                   f"its input is probably not prepared as in its training. Check teacher.mean/std (now {mean} / "
                   f"{std}), teacher.input_size ({cfg.teacher.input_size or cfg.data.image_size}) and "
                   f"teacher.resize ({cfg.teacher.resize}); teacher.check_accuracy=false runs anyway.")


