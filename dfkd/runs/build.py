"""The student and the synthesizer of a composed recipe, built against its teacher. Builders return what they
decided (a Tucker student's ranks) beside what they built; they never write into the recipe."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from omegaconf import DictConfig

from dfkd.data import image_shape
from dfkd.errors import RunError
from dfkd.models.classifier import Classifier
from dfkd.models.files import build_classifier
from dfkd.runs.config import to_plain
from dfkd.synthesizers import SYNTHESIZERS, Synthesizer, require_batchnorm
from dfkd.synthesizers.base import TeacherNeedsBatchNorm
from dfkd.teachers import ACCESS_LEVELS, Teacher, access_rank
from dfkd.teachers.build import teacher_normalization


@dataclass
class BuiltStudent:
    classifier: Classifier
    arch: str
    arch_kwargs: dict  # as the recipe gives them, plus what the build chose (a Tucker student's base and ranks)


def build_student(cfg: DictConfig, teacher: Teacher) -> BuiltStudent:
    """The student: an architecture by name, or (`arch: tucker`) the teacher compressed by Tucker-2 decomposition,
    whose chosen ranks come back in `arch_kwargs` (what an exported student file records)."""
    s, d = cfg.student, cfg.data
    kw = to_plain(s).get("arch_kwargs") or {}
    if teacher.module is None:  # nothing of a black box is visible: the student takes the data's preprocessing
        if s.arch == "tucker":
            raise RunError("student=tucker compresses the teacher's own layers, which a black-box teacher "
                           "(teacher.access=" + cfg.teacher.access + ") does not show: pick a student architecture")
        clf = build_classifier(s.arch, kw, d.num_classes, d.channels, d.image_size,
                               cfg.teacher.input_size or d.image_size, cfg.teacher.resize, d.mean, d.std)
        return BuiltStudent(clf, s.arch, kw)
    p = teacher.preprocess
    if s.arch == "tucker" and "ranks" not in kw:
        from dfkd.models.tucker import compress

        model, ranks = compress(teacher.model, kw.get("layers"), kw.get("rank", "vbmf"), int(d.channels))
        decided = {"base": cfg.teacher.arch, "base_kwargs": to_plain(cfg.teacher)["arch_kwargs"] or {},
                   "ranks": ranks, "layers": list(ranks), "rank": kw.get("rank", "vbmf")}
        clf = Classifier(copy.deepcopy(p), model.requires_grad_(True).train())
        return BuiltStudent(clf, s.arch, decided)
    clf = build_classifier(s.arch, kw, d.num_classes, d.channels, d.image_size, p.input_size, p.resize,
                           d.mean, d.std)
    return BuiltStudent(clf, s.arch, kw)


def build_synthesizer(cfg: DictConfig, teacher: Teacher | None = None) -> Synthesizer:
    """The recipe's synthesizer, told what the data looks like; with `teacher`, checked against it (a method
    that matches BatchNorm statistics refuses a teacher without BatchNorm here, before anything runs)."""
    kwargs = dict(to_plain(cfg.synthesizer))
    name = kwargs.pop("name")
    d = cfg.data
    mean, std = teacher_normalization(cfg)
    try:
        synthesizer = SYNTHESIZERS.build(name, **kwargs, num_classes=int(d.num_classes), image_shape=image_shape(d),
                                         mean=mean, std=std)
    except (TypeError, ValueError) as e:  # a recipe key the synthesizer does not take, or a value it refuses
        raise RunError(f"synthesizer '{name}': {e}") from None
    granted = cfg.teacher.access
    if access_rank(synthesizer.access) > access_rank(granted):
        fits = [n for n in SYNTHESIZERS.names()
                if access_rank(getattr(SYNTHESIZERS.get(n), "access", "white")) <= access_rank(granted)]
        raise RunError(f"synthesizer '{name}' needs {synthesizer.access} access to the teacher but the recipe grants "
                       f"teacher.access={granted}. Methods that fit {granted} access: {', '.join(fits) or 'none'}"
                       f" (levels, least to most: {', '.join(ACCESS_LEVELS)}).")
    if teacher is not None:
        try:
            require_batchnorm(synthesizer, teacher, name)
        except TeacherNeedsBatchNorm as e:
            raise RunError(str(e)) from None
        synthesizer.check_teacher(teacher)
    return synthesizer
