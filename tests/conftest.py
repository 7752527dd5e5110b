"""Fixtures shared by the tests. Plug-ins named by any recipe on the search path (`DFKD_RECIPE_PATH` adds
folders) are imported first, so every registered synthesizer, built-in or plug-in, is under test."""
import pytest

from dfkd.runs.plugins import recipe_plugins

recipe_plugins()


@pytest.fixture
def kd_losses(monkeypatch):
    """Every KD loss the loop computes in this test, in order (seen through its divergence guard, which checks
    each one)."""
    from dfkd.loop.guards import Guards

    seen, check = [], Guards.finite

    def record(self, name, value, part):
        if name == "KD loss":
            seen.append(float(value))
        return check(self, name, value, part)

    monkeypatch.setattr(Guards, "finite", record)
    return seen


@pytest.fixture
def tiny():
    """(teacher, student, ctx): a random ResNet-8 pair on 1x12x12 images of 4 classes."""
    from tests.helpers import tiny_pair

    return tiny_pair()


@pytest.fixture
def http_teacher():
    """start(labels=False) -> the URL of the shipped LeNet-5 served over HTTP on 127.0.0.1 (closed afterwards)."""
    import threading

    from dfkd.teachers.serve import make_server
    from tests.helpers import shipped_lenet

    servers = []

    def start(labels=False):
        server = make_server(shipped_lenet(), port=0, labels=labels)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()
