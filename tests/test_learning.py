"""Each method teaches: on a tiny problem (a ResNet-8 teacher of four digit classes at 12x12, trained here in about
three seconds), a fixed number of rounds of the method's synthesis, each followed by a fixed number of KD steps of
the same student, ends clearly above KD on smoothed noise (the plug-in example, `examples/noise_synthesizer.py`)
under the same budget: the same rounds, images a round, student steps, batch, optimizer and student initialization.

The student is scored on digits the teacher never trained on, taken from the embedded training split (a tuning
split for these settings): the held-out split, which the published figures use, is not read here.

The harness is deliberately the same plain KD step for every method (the loop's method-specific student losses,
bank and replay are tested elsewhere): what is judged here is the images. It catches a synthesis that no longer
teaches (the whole objective ascended instead of descended: the sign mutant of `weighted_total` in
dfkd/synthesizers/base.py fails it); a single wrong term is left to the objective and hand-computation tests, which
this check is too coarse to replace (DAFL with its one-hot term zeroed or negated still beats noise here:
`python -m tests.mutants --only dafl --tests tests/test_learning.py`)."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from dfkd.data import embedded_mnist_splits
from dfkd.losses import kd_kl, kd_l1
from dfkd.models.files import build_classifier
from dfkd.runs.plugins import load_plugins
from dfkd.synthesizers import SYNTHESIZERS, SynthContext
from dfkd.teachers import WhiteBoxTeacher

CLASSES, SIZE = 4, 12
DATA = dict(num_classes=CLASSES, image_shape=(1, SIZE, SIZE), mean=[0.5], std=[0.25])
CHANCE = 1 / CLASSES
MARGIN = 0.10  # over noise KD: four binomial standard deviations on the 400 scored digits
SMALL_GENERATOR = {"batch_size": 64, "ngf": 8, "nz": 16}
KD_LOSSES = {"kl": kd_kl, "l1": kd_l1}  # l1: the student loss of DFAD and DFME's papers (distill.kd_loss=l1)
# name: (synthesizer settings, rounds, KD steps a round[, student loss]); all of them in about a minute and a half
LEARNING = {
    "deepinversion": ({"batch_size": 64, "iterations": 40, "lr": 0.25}, 8, 25),
    "cmi": ({**SMALL_GENERATOR, "g_steps": 20, "lr_g": 0.1, "adv": 0.0, "flip": False, "head_dim": 32,
             "memory_size": 1024, "n_neg": 256, "augment": [{"name": "RandomCrop", "padding": 1}]},
            8, 30),
    "dafl": ({**SMALL_GENERATOR, "lr": 0.02}, 40, 3),
    "kegnet": ({"batch_size": 64, "nz": 16}, 40, 6),
    "zskt": ({"batch_size": 64, "ngf": 16, "nz": 32, "lr": 0.01}, 60, 5),
    "dfad": ({**SMALL_GENERATOR, "lr": 0.01}, 80, 5, "l1"),  # with KL its generator collapses to agreed images
    "dfq": ({"batch_size": 64, "ngf": 16, "nz": 32, "lr": 3e-3}, 60, 5),
    "fastdfkd": (SMALL_GENERATOR, 40, 5),
    "nayer": ({"batch_size": 64, "ngf": 8, "noise_dim": 16, "g_steps": 5}, 20, 10),
    "dfme": (SMALL_GENERATOR, 40, 5),
    "ideal": ({**SMALL_GENERATOR, "g_steps": 10, "head": "tanh_bn"}, 40, 5),
}


def _classifier(width: float) -> torch.nn.Module:
    return build_classifier("resnet8", {"width": width}, CLASSES, 1, SIZE, SIZE, "pad", [0.5], [0.25])


@functools.lru_cache(maxsize=1)
def problem():
    """(frozen teacher, scoring images, their labels): digits 0-3 of the embedded training split at 12x12; the
    teacher trains on the first 1,200 of them and the student is scored on the other 400."""
    x, y = embedded_mnist_splits().train.tensors
    keep = y < CLASSES
    x, y = F.interpolate(x[keep], size=(SIZE, SIZE), mode="area"), y[keep]
    torch.manual_seed(0)
    order = torch.randperm(len(y))
    fit, score = order[:1200], order[1200:]
    teacher = _classifier(0.5)
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(150):
        i = fit[torch.randint(0, len(fit), (128,))]
        loss = F.cross_entropy(teacher(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return WhiteBoxTeacher(teacher.eval()), x[score], y[score]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def distill(name: str, settings: dict, rounds: int, kd_steps: int, student_loss: str = "kl",
            tau: float = 3.0) -> dict:
    """`rounds` times: one `synthesize()`, then `kd_steps` Adam steps of KD (KL at `tau`) on the method's fresh
    samples where it makes them (`sample()`, as the loop), else on batches drawn from every image synthesized so
    far. The student's accuracy and its mean KD loss over the first and last fifths of the steps."""
    teacher, x, y = problem()
    torch.manual_seed(1)  # the same student initialization for every method
    student = _classifier(0.25)
    syn = SYNTHESIZERS.build(name, **settings, **DATA)
    syn.check_teacher(teacher)
    syn.attach(teacher, student, SynthContext(CLASSES, (1, SIZE, SIZE), (0.5,), (0.25,), torch.device("cpu")))
    opt = torch.optim.Adam(student.parameters(), 3e-3)
    bank, losses = [], []
    for _ in range(rounds):
        student.train()
        bank.append(syn.synthesize().images)
        pool = torch.cat(bank)
        for _ in range(kd_steps):
            batch = syn.sample(settings["batch_size"])  # fresh G(z), where the method asks for it (as the loop)
            if batch is None:
                batch = pool[torch.randint(0, len(pool), (settings["batch_size"],))]
            with torch.no_grad():
                target = teacher(batch)
            loss = KD_LOSSES[student_loss](student(batch), target, tau)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    syn.detach()
    span = max(kd_steps, len(losses) // 5)
    return {"acc": accuracy(student, x, y), "first": sum(losses[:span]) / span, "last": sum(losses[-span:]) / span}


@functools.lru_cache(maxsize=None)
def noise_kd(batch_size: int, rounds: int, kd_steps: int, student_loss: str = "kl") -> dict:
    """The baseline, once per budget."""
    if "noise" not in SYNTHESIZERS.names():  # conftest registers it through its recipe's `plugins`
        load_plugins(["examples/noise_synthesizer.py"])
    return distill("noise", {"batch_size": batch_size, "blur": 3}, rounds, kd_steps, student_loss)


def test_the_tiny_teacher_knows_its_digits():
    teacher, x, y = problem()
    assert accuracy(teacher, x, y) > 0.9


def test_every_builtin_method_has_a_learning_case():
    builtin = {n for n in SYNTHESIZERS.names() if SYNTHESIZERS.get(n).__module__.startswith("dfkd.")}
    assert builtin == set(LEARNING), "add the method to LEARNING in tests/test_learning.py"


@pytest.mark.parametrize("name", list(LEARNING))
def test_a_method_teaches_clearly_better_than_noise_kd_under_the_same_budget(name):
    """Fails on the sign mutant of `Synthesizer.weighted_total` (every method's objective climbed, not descended):
    measured for DeepInversion, its first case."""
    settings, rounds, kd_steps, *student_loss = LEARNING[name]
    got = distill(name, settings, rounds, kd_steps, *student_loss)
    base = noise_kd(settings["batch_size"], rounds, kd_steps, *student_loss)
    assert got["last"] < got["first"], f"{name}: the KD loss did not fall ({got})"
    assert got["acc"] >= max(base["acc"], CHANCE) + MARGIN, \
        f"{name}: student {got['acc']:.3f}, noise KD {base['acc']:.3f} under the same budget (chance {CHANCE})"
