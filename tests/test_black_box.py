"""Black-box teachers (`teacher.access=scores|label`): the wrapper hides the model and counts every image, the
query budget stops a run cleanly, a remote teacher (a callable, an HTTP service on 127.0.0.1) is distilled from
end to end, and DFME's and IDEAL's terms against hand computations."""
import json
import threading

import pytest
import torch
import torch.nn.functional as F

from dfkd.errors import RunError
from dfkd.runs.config import compose
from dfkd.teachers.black_box import BlackBoxTeacher, QueryBudgetSpent, TeacherServiceError, local_answers
from dfkd.teachers.build import build_teacher
from tests.helpers import BLACK_BOX_LOOP as BB_LOOP, load_ckpt, run, shipped_lenet, small


def test_black_box_teacher_cannot_be_inspected_or_differentiated_through():
    teacher = build_teacher(compose("dfme_lenet"))
    assert isinstance(teacher, BlackBoxTeacher) and not isinstance(teacher, torch.nn.Module)
    for name in ("parameters", "modules", "state_dict", "model", "register_forward_hook", "named_buffers"):
        assert not hasattr(teacher, name), name
    with pytest.raises(AttributeError):
        teacher.model = torch.nn.Linear(1, 1)  # nothing can be hung on it either
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad and out.grad_fn is None
    with pytest.raises(RuntimeError):
        torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out.sum(1), torch.ones(4))  # probabilities
    assert teacher.queries == 4


def test_access_levels_restrict_the_answers():
    x = torch.rand(6, 1, 28, 28)
    probs = torch.softmax(shipped_lenet()(x), 1).detach()
    top2 = BlackBoxTeacher(local_answers(shipped_lenet()), "scores", 10, top_k=2)(x)
    assert ((top2 > 0).sum(1) == 2).all()
    torch.testing.assert_close(top2.max(1).values, probs.max(1).values)
    labels = BlackBoxTeacher(local_answers(shipped_lenet()), "label", 10)(x)
    assert torch.equal(labels, F.one_hot(probs.argmax(1), 10).float())
    with pytest.raises(TeacherServiceError, match="labels only"):  # a service that gives less than declared
        BlackBoxTeacher(lambda x: torch.zeros(x.shape[0], dtype=torch.long), "scores", 10)(x)


def test_budget_refuses_the_query_that_would_overspend_and_counts_purposes_apart():
    teacher = BlackBoxTeacher(local_answers(shipped_lenet()), "scores", 10, max_queries=10)
    with teacher.counting_as("teacher_check"):
        teacher(torch.rand(50, 1, 28, 28))          # not charged to the budget
    teacher(torch.rand(8, 1, 28, 28))
    with pytest.raises(QueryBudgetSpent, match="10"):
        teacher(torch.rand(3, 1, 28, 28))
    assert teacher.counts == {"distill": 8, "teacher_check": 50} and teacher.remaining() == 2


def test_a_method_needing_more_access_than_granted_fails_at_start_naming_what_fits(tmp_path):
    with pytest.raises(RunError, match=r"'deepinversion' needs white access.*scores.*dfme, ideal"):
        run(tmp_path, "deepinversion_resnet", "teacher.access=scores", *BB_LOOP)
    with pytest.raises(RunError, match=r"'dfme' needs scores access.*label.*ideal"):
        run(tmp_path, "dfme_lenet", "teacher.access=label", *BB_LOOP)
    with pytest.raises(RunError, match="teacher.access=scores"):
        run(tmp_path, "deepinversion_resnet", "teacher.max_queries=100", *BB_LOOP)


def test_query_count_equals_the_images_the_teacher_was_sent(tmp_path):
    import tests.blackbox_service as service

    service.images_seen = 0
    s = run(tmp_path, "dfme_lenet", "teacher.endpoint=tests.blackbox_service:answer", *BB_LOOP, *small("dfme_lenet"))
    assert s["queries"] > 0
    assert service.images_seen == s["queries"] + s["queries_teacher_check"] + 2  # + the 2-image start-up check
    # per iteration: a generator step (8 images, each at x and 2 directions) and one KD step of 8 images, of which
    # 6 are replayed from the memory (the generator step's own answers are in it from the first iteration on)
    assert s["queries"] == 4 * (8 * 3 + 2)
    assert s["teacher"]["params"] is None and s["compression_ratio"] is None


def test_query_budget_stops_the_run_cleanly_and_resume_continues_counting(tmp_path):
    over = ["distill.epochs=3", "distill.iterations_per_epoch=10"]
    s = run(tmp_path, "dfme_lenet", "run=budget", *BB_LOOP, *small("dfme_lenet"), *over, "teacher.max_queries=150")
    assert s["stopped_by_query_budget"] and 100 < s["queries"] <= 150 and s["iterations"] < 30
    folder = tmp_path / "budget"
    assert (folder / "student.pt").is_file() and (folder / "summary.json").is_file()
    assert load_ckpt(folder / "last.ckpt")["dfkd"]["per_rank"][0]["queries"] == s["queries"]
    rows = (folder / "curve.csv").read_text().splitlines()
    assert rows[0].endswith(",queries") and rows[-1].endswith(f",final,{s['queries']}")
    s2 = run(tmp_path, "dfme_lenet", "run=budget", *BB_LOOP, *small("dfme_lenet"), *over, "teacher.max_queries=300",
             "resume=true")
    assert s2["stopped_by_query_budget"] and 150 < s2["queries"] <= 300 and s2["iterations"] > s["iterations"]


def test_http_client_retries_server_errors_and_names_a_refusal():
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dfkd.teachers.remote import http_answers

    codes = [503, 500, 200, 400]

    class Flaky(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            code = codes.pop(0)
            body = json.dumps({"probabilities": [[0.1, 0.9]]} if code == 200 else {"error": "no"}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        answer = http_answers(url, "json", timeout_s=5, retries=3, backoff_s=0.01)
        torch.testing.assert_close(answer(torch.rand(1, 1, 2, 2)), torch.tensor([[0.1, 0.9]]))  # after 2 retries
        with pytest.raises(TeacherServiceError, match="refused the request: HTTP 400"):
            answer(torch.rand(1, 1, 2, 2))
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(TeacherServiceError, match=r"did not answer after 2 attempts"):
        http_answers(url, "json", timeout_s=1, retries=1, backoff_s=0.01)(torch.rand(1, 1, 2, 2))
