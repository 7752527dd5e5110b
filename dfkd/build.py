"""Building a run's parts from a composed recipe: the frozen teacher, the student, the synthesizer. The run
(dfkd.run), the teacher trainer (dfkd.teacher) and the throughput benchmark (dfkd.throughput) all build here."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader

from dfkd.blackbox import ACCESS_LEVELS, BlackBoxTeacher, access_rank, local_answers
from dfkd.checkpoint_io import build_classifier, load_weights
from dfkd.config import to_plain
from dfkd.preprocess import Classifier
from dfkd.rundir import RunError
from dfkd.synthesizers import SYNTHESIZERS, Synthesizer, require_batchnorm
from dfkd.synthesizers.base import TeacherNeedsBatchNorm


def image_shape(data: DictConfig) -> tuple[int, int, int]:
    return int(data.channels), int(data.image_size), int(data.image_size)


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


def build_teacher(cfg: DictConfig) -> Classifier | BlackBoxTeacher:
    """The frozen teacher from `cfg.teacher`, checked against the data it will be asked about: the model itself
    (`teacher.access=white`), or a `BlackBoxTeacher` that answers with scores or labels only (a local checkpoint
    wrapped, or `teacher.endpoint`)."""
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
    clf.recorded_acc = None  # the held-out accuracy the teacher file records, if any
    if t.checkpoint:
        path = Path(t.checkpoint)
        if not path.is_file():
            hint = (f" Create it with `python train.py recipe={t.train_recipe}` and pass "
                    f"teacher.checkpoint=<paths.runs>/{t.train_recipe}/teacher.pt." if t.train_recipe else "")
            raise RunError(f"teacher checkpoint {path} not found.{hint} Or set teacher.checkpoint=/path/to/file.")
        clf.model, meta = load_weights(clf.model, path, t.trust_pickle, t.arch)
        clf.recorded_acc = (meta.get("metrics") or {}).get("heldout_acc")
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
    return clf


def _remote_teacher(cfg: DictConfig) -> BlackBoxTeacher:
    """`teacher.endpoint`: a service or a callable, asked once about two images before anything runs."""
    from dfkd.remote_teacher import endpoint_answers

    t, d = cfg.teacher, cfg.data
    answer = endpoint_answers(str(t.endpoint), t.endpoint_format, float(t.timeout_s), int(t.retries))
    teacher = BlackBoxTeacher(answer, t.access, d.num_classes, t.top_k, t.max_queries)
    with teacher.counting_as("startup_check"):
        teacher(torch.rand(2, *image_shape(d)))  # a wrong shape or an unreachable service fails here, named
    return teacher


def is_black_box(teacher) -> bool:
    return isinstance(teacher, BlackBoxTeacher)


def build_student(cfg: DictConfig, teacher: Classifier) -> Classifier:
    """The student: an architecture by name, or (`arch: tucker`) the teacher compressed by Tucker-2
    decomposition, whose chosen ranks are written back into cfg.student so the run can be rebuilt."""
    s, d = cfg.student, cfg.data
    if is_black_box(teacher):
        if s.arch == "tucker":
            raise RunError("student=tucker compresses the teacher's own layers, which a black-box teacher "
                           "(teacher.access=" + cfg.teacher.access + ") does not show: pick a student architecture")
        return build_classifier(s.arch, s.arch_kwargs or {}, d.num_classes, d.channels, d.image_size,
                                cfg.teacher.input_size or d.image_size, cfg.teacher.resize, d.mean, d.std)
    p = teacher.preprocess
    if s.arch == "tucker" and "ranks" not in (s.arch_kwargs or {}):
        from dfkd.models.tucker import compress

        kw = to_plain(s).get("arch_kwargs") or {}
        model, ranks = compress(teacher.model, kw.get("layers"), kw.get("rank", "vbmf"))
        with open_dict(cfg):
            cfg.student.arch_kwargs = {"base": cfg.teacher.arch, "base_kwargs": to_plain(cfg.teacher)["arch_kwargs"] or {},
                                       "ranks": ranks, "layers": list(ranks), "rank": kw.get("rank", "vbmf")}
        return Classifier(copy.deepcopy(p), model.requires_grad_(True).train())
    return build_classifier(s.arch, s.arch_kwargs or {}, d.num_classes, d.channels, d.image_size,
                            p.input_size, p.resize, d.mean, d.std)


def filled_in_by_build(key: str, cfg: DictConfig) -> bool:
    """Whether a setting (dotted key) of a run's recipe.yaml is one `build_student` wrote there because `cfg` left
    it to the run: a Tucker student's base, ranks and (when `layers` is null) its list of decomposed layers."""
    kw = to_plain(cfg.student).get("arch_kwargs") or {}
    if cfg.student.arch != "tucker" or "ranks" in kw:
        return False
    filled = ("base", "base_kwargs", "ranks") + (() if kw.get("layers") else ("layers",))
    return any(key == f"student.arch_kwargs.{f}" or key.startswith(f"student.arch_kwargs.{f}.") for f in filled)


def build_synthesizer(cfg: DictConfig, teacher: torch.nn.Module | None = None) -> Synthesizer:
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


def check_teacher_accuracy(cfg: DictConfig, teacher: Classifier, acc: float, heldout: int) -> None:
    """Stop before any synthesis when the teacher scores poorly on the held-out real images (below halfway from
    chance to perfect), or far below what its file records: almost always preprocessing that differs from the
    teacher's training."""
    chance = 1.0 / int(cfg.data.num_classes)
    recorded = getattr(teacher, "recorded_acc", None)
    # below halfway from chance to perfect (55 % for 10 classes), or 10 points under what its file says
    low = acc < chance + 0.5 * (1 - chance) or (recorded is not None and acc < recorded - 0.10)
    if not cfg.teacher.check_heldout or cfg.teacher.random_init or not low:
        return
    mean, std = teacher_normalization(cfg)
    was = f" (its file records {100 * recorded:.1f} %)" if recorded is not None else ""
    raise RunError(f"the teacher scores {100 * acc:.1f} % on the {heldout} held-out images of '{cfg.data.name}'{was}: "
                   f"its input is probably not prepared as in its training. Check teacher.mean/std (now {mean} / "
                   f"{std}), teacher.input_size ({cfg.teacher.input_size or cfg.data.image_size}) and "
                   f"teacher.resize ({cfg.teacher.resize}); teacher.check_heldout=false runs anyway.")


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int = 500, device="cpu") -> float:
    """Top-1 accuracy of `model` ([0,1] images in; a module or a black-box teacher) on `dataset`."""
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        total += y.numel()
    if module is not None:
        module.train(was_training)
    return correct / max(total, 1)
