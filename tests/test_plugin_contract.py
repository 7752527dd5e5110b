"""A new method written in a folder outside dfkd, with its recipe, is contract-tested by the suite with no other
file edited: the folder on `DFKD_RECIPE_PATH` is all it takes."""
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

SYNTH = '''
import torch
from dfkd.synthesizers import SYNTHESIZERS, SynthBatch, Synthesizer


@SYNTHESIZERS.register("plaid")
class Plaid(Synthesizer):
    """Images of random horizontal and vertical stripes, with a learned brightness (one optimizer)."""
    test_settings = {"batch_size": 8}

    def __init__(self, batch_size: int = 32, lr: float = 0.01, **data):
        super().__init__(batch_size, **data)
        self.brightness = torch.nn.Parameter(torch.zeros(()))
        self.opt = torch.optim.SGD([self.brightness], lr=lr)

    def optimizers(self):
        return [{"optimizer": self.opt}]

    def synthesize(self) -> SynthBatch:
        c, h, w = self.ctx.image_shape
        rows = torch.rand(self.batch_size, c, h, 1, generator=self.rng, device=self.rng.device)
        cols = torch.rand(self.batch_size, c, 1, w, generator=self.rng, device=self.rng.device)
        x = (0.5 * (rows + cols) * torch.sigmoid(self.brightness + 2)).to(self.ctx.device)
        with self.scoring_student():
            confidence = self.teacher(x).softmax(1).max(1).values.mean()
        self.opt.zero_grad(set_to_none=True)
        self.ctx.backward(-confidence)
        self.ctx.step(self.opt)
        return SynthBatch(images=x.detach(), losses={"confidence": float(confidence)})
'''

RECIPE = '''
# A plug-in recipe from outside the repository.
defaults:
  - base
  - _self_
plugins: [{path}]
synthesizer: {{name: plaid, batch_size: 32, lr: 0.01}}
distill: {{epochs: 2, iterations_per_epoch: 10, batch_size: 32}}
bank: {{enabled: false}}
'''


@pytest.mark.slow
def test_a_synthesizer_in_a_foreign_folder_is_contract_tested_with_no_file_edited(tmp_path):
    (tmp_path / "plaid.py").write_text(textwrap.dedent(SYNTH))
    (tmp_path / "plaid_resnet.yaml").write_text(RECIPE.format(path=tmp_path / "plaid.py"))
    env = {**os.environ, "DFKD_RECIPE_PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "plaid",
                          "tests/test_synthesizer_contract.py", "-o", "addopts=--strict-markers"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "4 passed" in out.stdout, out.stdout[-2000:]  # the unit contract (3) and the kill-and-resume run
