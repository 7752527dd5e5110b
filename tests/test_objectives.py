"""Each method's objective, checked over the registry from what the synthesizer declares (`objective_terms`,
dfkd/synthesizers/terms.py): a new synthesizer gets these tests by declaring its terms, with no test edited.

- Every term of the objective is declared, and its weight comes from the constructor setting the declaration
  names (fails on: a weight set to zero or negated in a constructor; a term summed but not declared).
- Each term, optimized on its own, moves the quantity its paper names the way the paper says, against the same
  synthesizer with every weight at zero on the same draws (fails on: the sign of any term flipped, in the
  synthesizer or in the loss function it calls; the term dropped from the objective; teacher and student
  swapped where the swap changes the quantity)."""
import inspect

import pytest
import torch

from dfkd.synthesizers import SYNTHESIZERS
from dfkd.synthesizers.terms import MEASURES, measure
from tests.helpers import DATA, agreeing_student, build_tiny, tiny_pair

NAMES = SYNTHESIZERS.names()
DECLARED = [(n, k) for n in NAMES for k in SYNTHESIZERS.get(n).objective_terms]
CALLS = 4  # synthesis calls per arm: persistent generators take several steps; switched-on-later terms are on


def test_every_term_of_every_objective_is_declared_with_a_known_measure():
    for name in NAMES:
        syn, *_ = build_tiny(name)
        declared = type(syn).objective_terms
        assert set(declared) == set(syn.w), f"{name}: weighted terms {sorted(syn.w)}, declared {sorted(declared)}"
        for k, term in declared.items():
            assert term.measure in MEASURES, f"{name}.{k}: unknown measure {term.measure!r}"


@pytest.mark.parametrize("name", [n for n in NAMES if SYNTHESIZERS.get(n).objective_terms])
def test_each_weight_is_the_constructor_setting_its_term_names(name):
    """Fails on a weight set to zero, negated or swapped with another in the constructor."""
    cls = SYNTHESIZERS.get(name)
    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()}
    distinct = {term.weight: 0.37 + 0.11 * i for i, term in enumerate(cls.objective_terms.values()) if term.weight}
    syn, *_ = build_tiny(name, **cls.direction_settings, **distinct)
    for k, term in cls.objective_terms.items():
        if term.weight is None:
            assert syn.w[k] == 1.0, f"{name}.{k}: a term without a weight setting has weight 1"
        else:
            assert term.weight in defaults, f"{name}.{k}: no constructor setting {term.weight!r}"
            assert syn.w[k] == pytest.approx(distinct[term.weight]), f"{name}.{k} is not weighted by {term.weight}"
    default_syn, *_ = build_tiny(name, **cls.direction_settings)
    for k, term in cls.objective_terms.items():
        if term.weight is not None and term.weight not in cls.test_settings:
            assert default_syn.w[k] == defaults[term.weight], f"{name}.{k}: default weight is not the setting's"


def _build(name: str):
    """The method at its test and direction settings on the tiny pair, with a student that is the teacher's
    network perturbed (so the two agree on some images and differ in their predictions: the decision-adversarial
    terms act only where they agree)."""
    cls = SYNTHESIZERS.get(name)
    teacher, _, ctx = tiny_pair()
    student = agreeing_student(teacher)
    torch.manual_seed(123)
    syn = SYNTHESIZERS.build(name, **{**cls.test_settings, **cls.direction_settings}, **DATA)
    syn.check_teacher(teacher)
    syn.attach(teacher, student, ctx)
    return syn


def _last_batch(name: str, weights: dict[str, float]):
    syn = _build(name)
    syn.w = dict(weights)
    torch.manual_seed(7)  # augmentations draw from the global RNG: the same draws in both arms
    for _ in range(CALLS):
        batch = syn.synthesize()
    return syn, batch


@pytest.mark.parametrize("name, term", DECLARED, ids=[f"{n}-{k}" for n, k in DECLARED])
def test_each_term_alone_moves_its_quantity_the_way_its_paper_says(name, term):
    declared = SYNTHESIZERS.get(name).objective_terms[term]
    probe = _build(name)
    zero = {k: 0.0 for k in probe.w}
    weight = probe.w[term] or 1.0
    syn0, still = _last_batch(name, zero)
    syn1, moved = _last_batch(name, {**zero, term: weight})
    before, after = measure(syn0, declared.measure, still), measure(syn1, declared.measure, moved)
    if declared.way == "lower":
        assert after < before, f"{name}.{term} alone should lower {declared.measure}: {before:.6g} -> {after:.6g}"
    else:
        assert after > before, f"{name}.{term} alone should raise {declared.measure}: {before:.6g} -> {after:.6g}"


def test_weighted_total_is_the_weighted_sum_of_the_weighted_terms():
    """Fails on a weight or sign change in `Synthesizer.weighted_total`: 0.5 * 2 - 1 * 3 = -2, `x` not summed."""
    syn, *_ = build_tiny("dafl")
    syn.w = {"a": 0.5, "b": -1.0}
    total = syn.weighted_total({"a": torch.tensor(2.0), "b": torch.tensor(3.0), "x": torch.tensor(100.0)})
    assert total.item() == pytest.approx(-2.0)
