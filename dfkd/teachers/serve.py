"""Serve a dfkd model file as a black-box teacher over HTTP, with the protocol of dfkd/teachers/remote.py:

    python -m dfkd.teachers.serve checkpoints/teachers/lenet5_mnist.pt --port 8000 [--labels] [--host 127.0.0.1]
    python train.py recipe=dfme_lenet teacher.endpoint=http://127.0.0.1:8000

Answers POSTs of [0,1] images (JSON or .npy) with softmax probabilities, or with labels only (`--labels`). It
is a local test double for a real service (one thread per request, no authentication): bind it to 127.0.0.1."""
from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from dfkd.models.files import load_classifier
from dfkd.teachers.remote import npy_bytes, read_npy


def make_server(model: torch.nn.Module, host: str = "127.0.0.1", port: int = 0, labels: bool = False,
                ) -> ThreadingHTTPServer:
    """An HTTP server answering for `model` ([0,1] images in, logits out); port 0 picks a free port."""
    model.eval().requires_grad_(False)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            try:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                npy = self.headers.get("Content-Type", "") == "application/x-npy"
                if npy:
                    images = torch.from_numpy(read_npy(body)).float()
                else:
                    images = torch.tensor(json.loads(body)["images"], dtype=torch.float32)
                with lock, torch.no_grad():
                    probs = torch.softmax(model(images), dim=1)
            except Exception as e:  # a bad request is the client's: say why
                self._send(400, "application/json", json.dumps({"error": str(e)}).encode())
                return
            answer = probs.argmax(1) if labels else probs
            if npy:
                self._send(200, "application/x-npy", npy_bytes(answer.numpy()))
            else:
                key = "labels" if labels else "probabilities"
                self._send(200, "application/json", json.dumps({key: answer.tolist()}).encode())

        def _send(self, code: int, content_type: str, payload: bytes):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):  # quiet: one line per batch would flood a run's log
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m dfkd.teachers.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a dfkd model file (a shipped teacher, an exported student)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--labels", action="store_true", help="answer with the predicted class only")
    a = p.parse_args(argv)
    server = make_server(load_classifier(a.model), a.host, a.port, a.labels)
    print(f"serving {a.model} at http://{a.host}:{server.server_address[1]} "
          f"({'labels' if a.labels else 'probabilities'}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
