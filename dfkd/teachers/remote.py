"""Teachers that are not a local model file: an HTTP service (`teacher.endpoint=http://...`) or a Python callable
(`teacher.endpoint=package.module:function`). Either becomes the `answer` function of a `BlackBoxTeacher`.

The HTTP protocol (one POST per batch; `teacher.endpoint_format`):
- `json`: request `{"images": [N][C][H][W] floats in [0,1]}`; answer `{"probabilities": [N][K]}` or
  `{"labels": [N]}`.
- `npy`: request body a NumPy .npy file of float32 [N, C, H, W] (Content-Type application/x-npy); answer a .npy of
  float [N, K] probabilities or integer [N] labels. Read with allow_pickle=False: no code runs from an answer.
`python -m dfkd.teachers.serve` serves a dfkd model file with this protocol (for tests, and to try a recipe end to end).

Requests time out after `timeout_s`; connection errors, timeouts, 429 and 5xx answers are retried `retries` times
with exponential back-off (0.5 s, 1 s, 2 s, ...); any other refusal stops the run with the service's own message.
"""
from __future__ import annotations

import importlib
import io
import json
import time
import urllib.error
import urllib.request
from typing import Callable

import numpy as np
import torch

from dfkd.teachers.black_box import TeacherServiceError
from dfkd.errors import DfkdError

FORMATS = ("json", "npy")


def npy_bytes(arr: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file (both directions of the npy protocol)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def read_npy(body: bytes) -> np.ndarray:
    """A .npy file's array, read without pickle: no code runs from a request or an answer."""
    return np.load(io.BytesIO(body), allow_pickle=False)


def encode_request(images: torch.Tensor, fmt: str) -> tuple[bytes, str]:
    arr = images.detach().float().cpu().numpy()
    if fmt == "json":
        return json.dumps({"images": arr.tolist()}).encode(), "application/json"
    return npy_bytes(arr), "application/x-npy"


def decode_answer(body: bytes, fmt: str) -> torch.Tensor:
    """Probabilities [N, K] (float) or labels [N] (int64) from a service's answer body."""
    try:
        if fmt == "json":
            doc = json.loads(body)
            if "probabilities" in doc:
                return torch.tensor(doc["probabilities"], dtype=torch.float32)
            if "labels" in doc:
                return torch.tensor(doc["labels"], dtype=torch.int64)
            raise TeacherServiceError(f"the teacher's JSON answer has neither 'probabilities' nor 'labels' "
                                      f"(keys: {sorted(doc)})")
        arr = read_npy(body)
    except (ValueError, TypeError, KeyError) as e:
        raise TeacherServiceError(f"cannot read the teacher's {fmt} answer: {e}") from None
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.float() if t.is_floating_point() else t.long()


def http_answers(url: str, fmt: str = "json", timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.5) -> Callable[[torch.Tensor], torch.Tensor]:
    if fmt not in FORMATS:
        raise DfkdError(f"teacher.endpoint_format must be one of {', '.join(FORMATS)}, got {fmt!r}")

    def answer(x: torch.Tensor) -> torch.Tensor:
        body, content_type = encode_request(x, fmt)
        last = None
        for attempt in range(int(retries) + 1):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    return decode_answer(response.read(), fmt)
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode(errors="replace")
                if e.code != 429 and e.code < 500:
                    raise TeacherServiceError(f"the teacher at {url} refused the request: HTTP {e.code} "
                                              f"{e.reason}: {detail}") from None
                last = f"HTTP {e.code} {e.reason}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = str(getattr(e, "reason", e))
        raise TeacherServiceError(f"the teacher at {url} did not answer after {int(retries) + 1} attempts (last: "
                                  f"{last}). Check that the service is up, or raise teacher.timeout_s / "
                                  f"teacher.retries; resume=true continues the run from its last checkpoint.")

    return answer


def callable_answers(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """`package.module:function`: a function from a [N, C, H, W] batch of [0,1] images to probabilities or labels."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise DfkdError(f"teacher.endpoint={path!r} is neither a URL (http://... or https://...) nor an import "
                        f"path 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise DfkdError(f"teacher.endpoint={path!r}: cannot import it ({e}); the module must be importable "
                        f"(installed, or on PYTHONPATH)") from None
    if not callable(fn):
        raise DfkdError(f"teacher.endpoint={path!r} is not callable")
    return fn


def endpoint_answers(endpoint: str, fmt: str, timeout_s: float, retries: int) -> Callable:
    if endpoint.startswith(("http://", "https://")):
        return http_answers(endpoint, fmt, timeout_s, retries)
    return callable_answers(endpoint)
