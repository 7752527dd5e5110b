"""The plug-in contract, checked for every registered synthesizer (built-in, or a plug-in named by any recipe on
the search path, e.g. one in a folder of `DFKD_RECIPE_PATH`), built from its class's `test_settings`:

- synthesis moves only what the method optimizes: the teacher (weights, gradients, BN running statistics) never,
  the student never (it scores in eval mode and is put back in train mode); images are detached, finite, the
  right shape, and in [0,1] unless the method declares BN-headed generators (`bounded_images = False`);
- every optimizer it declares is owned by it (Lightning checkpoints it) and stepped through the loop
  (`ctx.step`), and no other;
- `extra_state()` holds plain values and tensors, and restoring it (with the weights and optimizer states)
  reproduces the next synthesized batch;
- a run of its recipe killed (its folder as a SIGKILL leaves it) and resumed ends in the same state as an
  uninterrupted run.
A new method gets all of this by registering itself; no test file is edited."""
import copy
import io
import json
import math

import pytest
import torch

from dfkd.runs.config import compose
from dfkd.synthesizers import SYNTHESIZERS
from tests.helpers import (LOOP, assert_teacher_untouched, load_ckpt, recipe_of_each_synthesizer, run, run_killed,
                           small, teacher_snapshot, tiny_pair)

NAMES = SYNTHESIZERS.names()
DATA = dict(num_classes=4, image_shape=(1, 12, 12), mean=[0.5], std=[0.25])


def build(name, rank=0):
    teacher, student, ctx = tiny_pair()
    stepped = []
    ctx.rank = rank
    ctx.step = lambda opt: (stepped.append(opt), opt.step())
    torch.manual_seed(123)  # identical generator init on every "rank", as DDP's broadcast guarantees
    syn = SYNTHESIZERS.build(name, **SYNTHESIZERS.get(name).test_settings, **DATA)
    syn.attach(teacher, student, ctx)
    return syn, teacher, student, stepped


@pytest.mark.parametrize("name", NAMES)
def test_synthesis_moves_only_what_the_method_optimizes(name):
    syn, teacher, student, _ = build(name)
    before_t = teacher_snapshot(teacher)
    before_own = {k: v.clone() for k, v in syn.state_dict().items() if v.is_floating_point()}
    student.train()
    before_s = copy.deepcopy(student.state_dict())
    modes = []
    hook = student.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    batch = syn.synthesize()
    hook.remove()

    x = batch.images
    assert x.shape[1:] == (1, 12, 12) and x.shape[0] >= 1 and not x.requires_grad and torch.isfinite(x).all()
    if syn.bounded_images:
        assert x.min() >= 0 and x.max() <= 1, f"{name}: images leave [0,1] (set bounded_images = False if meant)"
    assert all(isinstance(v, float) and math.isfinite(v) for v in batch.losses.values())
    assert_teacher_untouched(teacher, before_t)
    for k, v in student.state_dict().items():
        assert torch.equal(v, before_s[k]), f"{name}: synthesis changed student {k}"
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in student.parameters())
    assert not any(modes), f"{name}: the student scored synthetic images in train mode"
    assert student.training, f"{name}: the student was not put back in train mode"
    if syn.optimizers():
        params = {n for n, _ in syn.named_parameters()}
        moved = [k for k, v in syn.state_dict().items() if k in params and not torch.equal(v, before_own[k])]
        assert moved, f"{name}: it declares optimizers but no parameter moved"
    fresh = syn.sample(6)
    if fresh is not None:
        assert fresh.shape == (6, 1, 12, 12) and not fresh.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_optimizers_are_owned_and_stepped_through_the_loop(name):
    syn, _, _, stepped = build(name)
    declared = [item["optimizer"] for item in syn.optimizers()]
    owned = {id(p) for o in declared for g in o.param_groups for p in g["params"]}
    assert owned <= {id(p) for p in syn.parameters()}, f"{name}: an optimizer holds parameters it does not own"
    for _ in range(2):
        syn.synthesize()
    assert {id(o) for o in stepped} == {id(o) for o in declared}, \
        f"{name}: every declared optimizer, and only those, must step through ctx.step"


def _state(syn) -> tuple:
    opts = [{k: (v.state_dict() if v is not None and k != "grad_clip" else v) for k, v in item.items()}
            for item in syn.optimizers()]
    return copy.deepcopy(syn.state_dict()), copy.deepcopy(syn.extra_state()), copy.deepcopy(opts)


@pytest.mark.parametrize("name", NAMES)
def test_extra_state_round_trips_and_reproduces_synthesis(name):
    a, *_ = build(name)
    a.synthesize()
    weights, extra, opts = _state(a)
    graphs = [k for k, v in _tensors(a.extra_state()) if v.requires_grad]
    assert not graphs, f"{name}: extra state {graphs} holds an autograd graph (a .detach() missing)"
    buf = io.BytesIO()
    torch.save(extra, buf)  # tensors and plain values only: loadable with weights_only=True
    extra = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    b, *_ = build(name)
    b.load_state_dict(weights)
    b.load_extra_state(extra)
    for item, saved in zip(b.optimizers(), opts):
        item["optimizer"].load_state_dict(saved["optimizer"])
        if item.get("scheduler") is not None:
            item["scheduler"].load_state_dict(saved["scheduler"])
    torch.manual_seed(7)  # augmentations draw from the global RNG, which the run checkpoints separately
    xa = a.synthesize().images
    torch.manual_seed(7)
    xb = b.synthesize().images
    torch.testing.assert_close(xb, xa, msg=f"{name}: the restored synthesizer made different images")


def _tensors(value, where=""):
    """(path, tensor) of every tensor in a nest of dicts and lists."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{where}[{i}]")


def _assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{where} differs")
    else:
        assert a == b, where


RESUME = [*LOOP, "distill.epochs=3", "distill.kd_steps=2", "trainer.deterministic=true",
          "distill.replay.capacity=12"]  # with a replay memory, which must come back whole


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_killed_run_resumes_to_the_same_state_as_an_uninterrupted_one(tmp_path, name):
    recipe = recipe_of_each_synthesizer().get(name)
    if recipe is None:
        pytest.skip(f"no embedded recipe uses synthesizer '{name}'")
    budget = [*RESUME, *small(recipe)]
    run(tmp_path, recipe, "run=straight", *budget)
    run_killed(tmp_path, recipe, "run=crash", *budget, "debug.kill_at_iteration=3")
    mid = load_ckpt(tmp_path / "crash" / "last.ckpt")
    assert mid["dfkd"]["iteration"] == 2 and not (tmp_path / "crash" / "summary.json").exists()
    run(tmp_path, recipe, "run=crash", *budget, "resume=true")

    a, b = load_ckpt(tmp_path / "straight" / "last.ckpt"), load_ckpt(tmp_path / "crash" / "last.ckpt")
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["dfkd"]["iteration"] == b["dfkd"]["iteration"] == 6
    # student, generators, decoders, weight average: every parameter and buffer of the module
    _assert_same(a["state_dict"], b["state_dict"], "state_dict")
    ra, rb = a["dfkd"]["per_rank"][0], b["dfkd"]["per_rank"][0]
    for key in ("bank", "replay", "synth", "images_synthesized", "kd_rng"):  # per-rank state, RNGs included
        _assert_same(ra[key], rb[key], key)
    assert ra["replay"]["size"] == 12
    assert len(a["optimizer_states"]) == len(b["optimizer_states"])
    _assert_same([s["state"] for s in a["optimizer_states"]], [s["state"] for s in b["optimizer_states"]], "opt")
    assert [s["last_epoch"] for s in a["lr_schedulers"]] == [s["last_epoch"] for s in b["lr_schedulers"]]
    assert json.loads((tmp_path / "crash" / "summary.json").read_text())["resumed"] is True
    assert compose(recipe).synthesizer.name == name
