"""dfkd's CIFAR definitions load the Fast-Datafree/CMI teacher checkpoints and compute the same function.

`fixtures/cifar_teachers.json` holds each checkpoint's state_dict names and shapes and the logits that the
reference definitions produce under a deterministic weight fill (rule in its `about` field)."""
import json
import math
from pathlib import Path

import pytest
import torch

from dfkd.models import build_model

SPEC = json.loads((Path(__file__).parent / "fixtures" / "cifar_teachers.json").read_text())


def _fill(name: str, shape: list[int], i: int) -> torch.Tensor:
    n = math.prod(shape)
    j = torch.arange(n, dtype=torch.float64)
    if name.endswith("running_var"):
        v = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    elif name.endswith(".bias") or name.endswith("running_mean"):
        v = 0.1 * torch.sin(0.7 * j + i)
    elif name.endswith(".weight") and len(shape) == 1:
        v = 0.25 + 0.025 * torch.sin(0.7 * j + i)
    else:
        v = torch.sin(0.7 * j + i) / math.sqrt(n // shape[0])
    return v.reshape(shape).float()


@pytest.mark.parametrize("arch", sorted(SPEC["models"]))
def test_loads_reference_checkpoint_and_matches_golden_logits(arch):
    ref = SPEC["models"][arch]
    model = build_model(arch, num_classes=10, in_chans=3).eval()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours.items()) == [(k, s) for k, s in ref["state_dict"]]
    sd = {}
    for i, (name, shape) in enumerate(ref["state_dict"]):
        sd[name] = model.state_dict()[name] if name.endswith("num_batches_tracked") else _fill(name, shape, i)
    model.load_state_dict(sd, strict=True)
    x = torch.sin(0.01 * torch.arange(2 * 3 * 32 * 32, dtype=torch.float64)).reshape(2, 3, 32, 32).float()
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, torch.tensor(ref["logits"]), atol=2e-4, rtol=1e-3)
