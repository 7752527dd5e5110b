"""DFME (Truong et al., CVPR 2021): the forward-difference gradient, the class-balance term, a served teacher."""
import math

import pytest
import torch
import torch.nn.functional as F

from dfkd.synthesizers import SYNTHESIZERS
from dfkd.teachers.black_box import logits_from_answers
from tests.helpers import BLACK_BOX_LOOP, run, small, tiny_pair


def test_dfme_forward_differences_estimate_the_true_gradient():
    teacher, student, ctx = tiny_pair()
    syn = SYNTHESIZERS.build("dfme", batch_size=2, nz=8, ngf=4, directions=3000, epsilon=1e-3, num_classes=4,
                             image_shape=(1, 12, 12), mean=[0.5], std=[0.25])
    syn.attach(teacher, student, ctx)
    x = torch.rand(2, 1, 12, 12)
    est, loss, t_logits = syn.estimate_gradient(x)
    xr = x.clone().requires_grad_(True)
    student.eval()
    true_loss = (student(xr) - logits_from_answers(torch.softmax(teacher(xr), 1))).abs().mean(1)
    (true,) = torch.autograd.grad(true_loss.sum(), xr)
    torch.testing.assert_close(loss, true_loss.detach())
    cos = F.cosine_similarity(est.flatten(1), true.flatten(1))
    assert (cos > 0.7).all(), cos  # unbiased: d E[u u^T] = I; 3,000 directions in 144 dimensions
    scale = (est * true).flatten(1).sum(1) / true.flatten(1).pow(2).sum(1)  # the estimate's component along it
    assert ((scale > 0.85) & (scale < 1.15)).all(), scale  # no lost factor d, no wrong sign


def test_dfme_class_balance_term_is_dafls_entropy_of_the_students_view_and_costs_no_queries(monkeypatch):
    """synthesizer.info: the generator's objective gains info * sum_c pbar_c log10 pbar_c, pbar the batch-mean
    softmax of the (frozen) student on the generator's images; the teacher is asked nothing more for it."""
    teacher, student, ctx = tiny_pair()
    syn = SYNTHESIZERS.build("dfme", batch_size=6, nz=8, ngf=4, directions=2, info=2.0, num_classes=4,
                             image_shape=(1, 12, 12), mean=[0.5], std=[0.25])
    syn.attach(teacher, student, ctx)
    seen, sent, objectives = {}, [], []
    estimate, ask = syn.estimate_gradient, syn.teacher_probabilities

    def recording_estimate(x):
        seen["x"], (seen["grad"], *rest) = x, estimate(x)
        return (seen["grad"], *rest)

    monkeypatch.setattr(syn, "estimate_gradient", recording_estimate)
    monkeypatch.setattr(syn, "teacher_probabilities", lambda x: sent.append(len(x)) or ask(x))
    monkeypatch.setattr(syn, "generator_step", objectives.append)
    batch = syn.synthesize()
    assert sent == [6 * 3]                                  # x and 2 directions per image, nothing for the balance term
    x, grad = seen["x"], seen["grad"]
    with torch.no_grad():
        p = torch.softmax(student.eval()(x), 1).mean(0)
    by_hand = -(x * grad).sum() / 6 + 2.0 * (p * torch.log(p) / math.log(10)).sum()
    torch.testing.assert_close(objectives[0].detach(), by_hand)
    assert batch.losses["info"] == pytest.approx(float((p * torch.log10(p)).sum()), abs=1e-6)
    objectives[0].backward()
    assert all(q.grad is not None for q in syn.generator.parameters() if q.requires_grad)
    assert all(q.grad is None for q in student.parameters()) and all(q.grad is None for q in teacher.parameters())


@pytest.mark.parametrize("fmt", ["json", "npy"])
def test_dfme_distills_from_a_teacher_served_over_http(tmp_path, http_teacher, fmt):
    url = http_teacher()
    s = run(tmp_path, "dfme_lenet", f"teacher.endpoint={url}", f"teacher.endpoint_format={fmt}", *BLACK_BOX_LOOP,
            *small("dfme_lenet"))
    assert s["teacher"]["report_acc"] > 0.95 and s["queries"] > 0 and s["teacher"]["endpoint"] == url
    assert (tmp_path / "dfme_lenet" / "student.pt").is_file()
