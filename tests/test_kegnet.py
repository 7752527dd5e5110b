"""KegNet (Yoo et al., NeurIPS 2019): the terms beyond the paper's that its options add."""
import pytest

from dfkd.losses import kd_kl, tv_l1
from tests.helpers import build_case


def test_kegnet_options_beyond_the_paper_add_their_terms():
    syn, teacher, student = build_case("kegnet", head="sigmoid", tv=0.5, l2=0.1, adv=0.25)
    student.eval()
    y, z, x = syn._generate(0, 8)
    assert syn.bounded_images and 0 <= x.min() and x.max() <= 1
    terms = syn.loss_terms(0, y, z, x)
    assert terms["tv"].item() == pytest.approx(tv_l1(x).item())
    assert terms["l2"].item() == pytest.approx(x.flatten(1).norm(dim=1).mean().item(), rel=1e-6)
    assert terms["adv"].item() == pytest.approx(-kd_kl(student(x), teacher(x)).item(), rel=1e-5)
    plain, *_ = build_case("kegnet")
    assert set(plain.loss_terms(0, *plain._generate(0, 8))) == {"cls", "dec", "div"}
