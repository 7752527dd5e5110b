"""IDEAL (Zhang et al., ICLR 2023): one round trains a fresh generator on the student and asks the teacher once;
a label-only service distills end to end."""
import pytest
import torch
import torch.nn.functional as F

from dfkd.losses import mean_negative_entropy
from dfkd.models.generators import reinitialize
from dfkd.synthesizers import SYNTHESIZERS
from dfkd.synthesizers import ideal as ideal_module
from dfkd.teachers.black_box import TeacherServiceError
from tests.helpers import BLACK_BOX_LOOP, run, small, tiny_pair


def test_ideal_round_trains_a_fresh_generator_on_the_student_only_and_asks_once(monkeypatch):
    """One round: a redrawn generator, fixed z and class-balanced y, `g_steps` steps on the frozen student (no
    query), the lowest-loss batch kept and sent to the teacher once."""
    teacher, student, ctx = tiny_pair()
    # lr 10: the loss is not monotone over the steps, so keeping the lowest-loss batch differs from keeping the last
    syn = SYNTHESIZERS.build("ideal", batch_size=8, nz=8, ngf=4, g_steps=4, lr=10.0, num_classes=4,
                             image_shape=(1, 12, 12), mean=[0.5], std=[0.25])
    syn.attach(teacher, student, ctx)
    sent, steps = [], []
    ask = syn.teacher_probabilities
    monkeypatch.setattr(syn, "teacher_probabilities", lambda x: sent.append(x) or ask(x))
    generate = syn.generate
    monkeypatch.setattr(syn, "generate", lambda z: steps.append((z.clone(), generate(z))) or steps[-1][1])
    student_before = [p.clone() for p in student.parameters()]
    batch = syn.synthesize()
    first_weights = [p.detach().clone() for p in syn._generator.parameters()]
    assert len(steps) == 4 and all(torch.equal(z, steps[0][0]) for z, _ in steps)  # one latent batch a round
    assert sorted(batch.targets.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(sent) == 1 and torch.equal(sent[0], batch.images)             # 8 queries, at the end only
    with torch.no_grad():
        student.eval()
        totals = [F.cross_entropy(student(x), batch.targets) + 5.0 * mean_negative_entropy(student(x))
                  for _, x in steps]
    kept = min(range(4), key=lambda i: totals[i].item())
    assert kept not in (0, 3)  # neither the first nor the last batch: the test tells "lowest" from either
    torch.testing.assert_close(batch.images, steps[kept][1].detach())
    assert batch.losses["ce"] + 5.0 * batch.losses["info"] == pytest.approx(totals[kept].item(), rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(student_before, student.parameters()))
    assert all(p.grad is None for p in student.parameters()) and all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in syn._generator.parameters())
    first_z = steps[0][0]
    steps.clear()
    redrawn = []
    monkeypatch.setattr(ideal_module, "reinitialize", lambda g, rng: redrawn.append(
        [p.detach().clone() for p in g.parameters()]) or reinitialize(g, rng))
    syn.synthesize()  # the next round starts from a redrawn generator and a new latent batch
    assert len(redrawn) == 1 and all(torch.equal(a, b) for a, b in zip(redrawn[0], first_weights))
    assert not torch.equal(steps[0][0], first_z)
    assert not any(torch.equal(a, b) for a, b in zip(first_weights, syn._generator.parameters()) if a.dim() > 1)


def test_ideal_distills_from_a_label_only_service(tmp_path, http_teacher):
    url = http_teacher(labels=True)
    s = run(tmp_path, "ideal_lenet", f"teacher.endpoint={url}", *BLACK_BOX_LOOP, "distill.replay.fraction=1.0",
            *small("ideal_lenet"))
    assert s["teacher_access"] == "label" and s["queries"] == 4 * 8  # each round's images, asked about once
    with pytest.raises(TeacherServiceError, match="labels only"):  # the service cannot give what scores needs
        run(tmp_path, "dfme_lenet", f"teacher.endpoint={url}", "overwrite=true", *BLACK_BOX_LOOP, *small("dfme_lenet"))
