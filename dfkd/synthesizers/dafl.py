"""DAFL: Data-Free Learning of Student Networks (Chen et al., ICCV 2019), eq. 2-5.

A generator G is trained so that the frozen teacher T treats its images like real data:

    L_G = oh * CE(T(G(z)), argmax T(G(z)))            # one-hot loss, eq. 2
        + ie * sum_c pbar_c log10 pbar_c              # information entropy of the batch-mean prediction, eq. 4
        + a  * (-mean |f_T(G(z))|)                    # activation loss on the teacher's penultimate feature, eq. 3

f_T is taken by a forward hook on the input of `feature_layer` (default: the teacher's last Linear), not by a
special forward signature. The student is distilled (KL, tau = 1 in the paper) on the same G(z), detached: one
generator step to one student step. The generator is the paper's (Linear -> 2 x [up, conv, BN, LReLU] -> conv ->
Tanh -> BN(affine=False)); `bn_eps=0.8` reproduces the reference code's `BatchNorm2d(128, 0.8)` quirk.
Defaults: the paper's MNIST settings (batch 512, latent 100, Adam lr_G 0.2, oh 1, ie 5, a 0.1); `cosine_steps`
(off by default, not in the paper) decays lr_G over that many generator steps. `head="sigmoid"` (not in the paper)
emits [0,1] images directly instead of the normalized-space Tanh -> BN head.

lr_G 0.2 looks like a typo but matters: every conv of the generator is followed by BatchNorm, so the loss is
invariant to the scale of their weights, the weights grow quickly at that rate and the effective step decays by
itself. At a tenth of it (0.02) the generator of the MNIST recipe had, after 700 steps, 6 % of its pixels at the
background value (real digits: 81 %) and 20 % below 0, and its student scored 84 % against 89-91 % at 0.2
(docs/notes/dafl-kegnet.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dfkd.hooks import FeatureTaps, classifier_head
from dfkd.losses import information_entropy_loss  # DAFL eq. 4, shared with ZSKT
from dfkd.synthesizers.base import SYNTHESIZERS, SynthBatch
from dfkd.synthesizers.generative import GeneratorSynthesizer
from dfkd.synthesizers.terms import Term


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL eq. 3: -mean |f| (minimizing it maximizes the teacher's feature activations)."""
    return -features.abs().mean()


def one_hot_loss(logits: torch.Tensor) -> torch.Tensor:
    """DAFL eq. 2: cross-entropy of the teacher's output against its own argmax."""
    return F.cross_entropy(logits, logits.argmax(1))


@SYNTHESIZERS.register("dafl")
class DAFL(GeneratorSynthesizer):
    test_settings = {"batch_size": 8, "nz": 8, "ngf": 4, "lr": 0.01, "cosine_steps": 10}
    objective_terms = {"oh": Term("teacher_ce_own_label", "lower", "oh"),
                       "ie": Term("teacher_class_balance", "raise", "ie"),
                       "a": Term("teacher_feature_magnitude", "raise", "a")}

    def __init__(self, batch_size: int = 512, nz: int = 100, ngf: int = 64, lr: float = 0.2,
                 betas=(0.5, 0.999), oh: float = 1.0, ie: float = 5.0, a: float = 0.1,
                 feature_layer: str | None = None, bn_eps: float = 0.8, cosine_steps: int | None = None,
                 head: str = "tanh_bn", **data):
        super().__init__(batch_size, nz=nz, ngf=ngf, head=head, bn_eps=bn_eps, lr=lr, betas=betas,
                         cosine_steps=cosine_steps, **data)
        self.w = {"oh": oh, "ie": ie, "a": a}
        self.feature_layer = feature_layer
        self.taps: FeatureTaps | None = None

    def check_teacher(self, teacher) -> None:
        if self.feature_layer is None:
            classifier_head(teacher.model)  # raises when there is no Linear head to take the feature from
            return
        names = [n for n, _ in teacher.model.named_modules() if n]
        if self.feature_layer not in names:
            from dfkd.errors import DfkdError

            linear = [n for n, m in teacher.model.named_modules() if isinstance(m, torch.nn.Linear)]
            raise DfkdError(f"synthesizer.feature_layer={self.feature_layer!r} is not a module of the teacher. Its "
                            f"Linear layers: {linear}; its last modules: {names[-6:]}. synthesizer.feature_layer=null "
                            f"takes the input of its last Linear (the penultimate features), whatever the teacher.")

    def attach(self, teacher, student, ctx):
        super().attach(teacher, student, ctx)
        self.feature_layer = self.feature_layer or classifier_head(teacher.model)
        self.taps = self.hooks(FeatureTaps(teacher.model, [self.feature_layer], io="input"))

    def loss_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        t_logits = self.teacher(x)
        return {"oh": one_hot_loss(t_logits), "ie": information_entropy_loss(t_logits),
                "a": activation_loss(self.taps[self.feature_layer]), "logits": t_logits}

    def synthesize(self) -> SynthBatch:
        x = self.generate(self.latents(self.batch_size))
        terms = self.loss_terms(x)
        loss = self.weighted_total(terms)
        self.generator_step(loss)
        logged = {k: float(terms[k].detach()) for k in self.w}
        logged["total"] = float(loss.detach())
        logged["teacher_max_prob"] = float(F.softmax(terms["logits"].detach(), 1).max(1).values.mean())
        return SynthBatch(images=x.detach(), losses=logged)
