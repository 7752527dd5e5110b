"""The shared generator synthesizer (dfkd/synthesizers/generative.py): its head and learning-rate schedule."""
import math

import pytest

from tests.helpers import build_case


@pytest.mark.parametrize("name", ["dafl", "dfad", "zskt"])
def test_cosine_steps_decays_the_generator_lr_to_zero(name):
    syn, *_ = build_case(name, cosine_steps=4)
    lr0 = syn.opt.param_groups[0]["lr"]
    seen = []
    for step in range(4):
        syn.synthesize()
        seen.append(syn.opt.param_groups[0]["lr"])
    expected = [lr0 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(1, 5)]
    assert seen == pytest.approx(expected, abs=1e-12) and seen[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["dafl", "dfad"])
@pytest.mark.parametrize("head, bounded", [("tanh_bn", False), ("sigmoid", True)])
def test_generator_head_decides_whether_images_stay_in_the_unit_range(name, head, bounded):
    syn, *_ = build_case(name, head=head)
    x = syn.synthesize().images
    assert syn.bounded_images is bounded
    assert x.shape == (8, 1, 12, 12)
    if bounded:
        assert 0 <= x.min() and x.max() <= 1
    else:  # normalized-space BN output mapped to [0,1] space: per-channel batch mean and std are the data set's
        assert x.mean().item() == pytest.approx(0.5, abs=1e-3) and x.std().item() == pytest.approx(0.25, rel=0.05)
