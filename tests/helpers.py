"""Shared test support (plain functions and constants; fixtures are in conftest.py): tiny models and contexts,
the smallest run settings, and runners (in-process, or a subprocess where the user's command is the point)."""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import torch

from dfkd.checkpoint_io import build_classifier
from dfkd.config import compose, list_recipes
from dfkd.synthesizers import SYNTHESIZERS, SynthContext

ROOT = Path(__file__).resolve().parents[1]
LOOP = ["distill.epochs=2", "distill.iterations_per_epoch=2", "distill.synth_every=1", "distill.kd_steps=1",
        "distill.batch_size=8", "bank.capacity=64", "trainer.accelerator=cpu", "log.image_every=1",
        "distill.stop_at_chance_after=null"]  # a 4-iteration student may well be at chance
# paper-scale recipes run on FakeData with a random teacher
FAKE = ["data=fake", "teacher.checkpoint=null", "teacher.random_init=true"]


@functools.lru_cache(maxsize=None)
def recipe_cfg(recipe: str):
    """The recipe as composed with no overrides (cached: collection asks for every recipe many times)."""
    return compose(recipe)


def small(recipe: str) -> list[str]:
    """Overrides that shrink a recipe's synthesizer to its class's `test_settings` (scalar settings the recipe
    declares), plus a one-iteration synthesis-only phase where the recipe has one."""
    cfg = recipe_cfg(recipe)
    settings = SYNTHESIZERS.get(cfg.synthesizer.name).test_settings
    out = [f"synthesizer.{k}={'null' if v is None else v}" for k, v in settings.items()
           if k in cfg.synthesizer and (v is None or isinstance(v, (int, float, str, bool)))]
    if cfg.distill.synthesis_only_iterations:
        out.append("distill.synthesis_only_iterations=1")
    return out


def distill_recipes() -> list[str]:
    return [r for r in list_recipes() if recipe_cfg(r).task == "distill"]


def embedded_distill_recipes() -> list[str]:
    return [r for r in distill_recipes() if recipe_cfg(r).data.name == "mnist_embedded"]


def recipe_of_each_synthesizer() -> dict[str, str]:
    """One embedded recipe per registered synthesizer (the first by name)."""
    out = {}
    for r in embedded_distill_recipes():
        out.setdefault(recipe_cfg(r).synthesizer.name, r)
    return out


def run(tmp_path, recipe: str, *overrides) -> dict:
    """One run in this process; its summary."""
    from dfkd.run import main

    return main(compose(recipe, [f"paths.runs={tmp_path}", *overrides]))


def train(tmp_path, recipe, *overrides, check=True, env=None):
    """`python train.py recipe=...` as a user runs it (a subprocess)."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"recipe={recipe}", f"paths.runs={tmp_path}", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def load_ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def tiny_pair(seed: int = 0, image_size: int = 12, channels: int = 1, num_classes: int = 4):
    """A random ResNet-8 teacher with non-trivial BN running statistics, a smaller student, and their context."""
    torch.manual_seed(seed)
    mk = lambda w: build_classifier("resnet8", {"width": w}, num_classes, channels, image_size, image_size,  # noqa: E731
                                    "pad", [0.5] * channels, [0.25] * channels)
    teacher, student = mk(0.5), mk(0.25)
    for m in teacher.modules():  # as a trained network has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    teacher.eval().requires_grad_(False)
    ctx = SynthContext(num_classes, (channels, image_size, image_size), (0.5,) * channels, (0.25,) * channels,
                       torch.device("cpu"), seed=seed)
    return teacher, student, ctx


def teacher_snapshot(teacher):
    return {k: v.clone() for k, v in teacher.state_dict().items()}


def assert_teacher_untouched(teacher, before):
    assert not teacher.training
    for p in teacher.parameters():
        assert p.grad is None, "a gradient reached the teacher"
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher state {k} changed (BN running stats must not move)"
