"""DFAD: Data-Free Adversarial Distillation (Fang et al., arXiv 1912.11006), eq. 5.

Min-max game on the mean absolute error between logits (eq. 5):
    student:    min_S  mean |S(G(z)) - T(G(z))|       (distill.kd_loss=l1, on fresh G(z) each student step)
    generator:  max_G  mean |S(G(z)) - T(G(z))|       (one generator step per `synth_every` iterations)
with 5 student steps per generator step in the paper (distill.kd_steps=5). The student scores the
generator's images with frozen parameters, in eval mode by default; `student_mode="train"` normalizes with the
generator batch's own BN statistics as the reference code does (it also moved the running statistics on adversarial
batches; dfkd keeps them). Generator: DAFL's trunk with default BN eps (GeneratorA).
Defaults: MNIST settings (nz 100, Adam lr_G 1e-3, constant). `cosine_steps` decays lr_G over that many generator
steps, as the student's schedule decays (the CIFAR script's `--scheduler` decays both): a generator that keeps its
full lr while the student's goes to zero wins the game at the end and the student's held-out accuracy falls.
`head="sigmoid"` (not in the paper) emits [0,1] images directly instead of the normalized-space Tanh -> BN head.
"""
from __future__ import annotations

from dfkd.losses import kd_l1
from dfkd.synthesizers.base import SYNTHESIZERS, SynthBatch
from dfkd.synthesizers.generative import GeneratorSynthesizer
from dfkd.synthesizers.terms import Term


@SYNTHESIZERS.register("dfad")
class DFAD(GeneratorSynthesizer):
    test_settings = {"batch_size": 8, "nz": 8, "ngf": 4, "cosine_steps": 10}
    objective_terms = {"adv": Term("teacher_student_l1", "raise")}

    def __init__(self, batch_size: int = 512, nz: int = 100, ngf: int = 64, lr: float = 1e-3, betas=(0.9, 0.999),
                 cosine_steps: int | None = None, head: str = "tanh_bn", student_mode: str = "eval", **data):
        super().__init__(batch_size, nz=nz, ngf=ngf, head=head, lr=lr, betas=betas, cosine_steps=cosine_steps,
                         fresh_samples=True, **data)
        self.set_student_mode(student_mode)
        self.w = {"adv": 1.0}

    def synthesize(self) -> SynthBatch:
        x = self.generate(self.latents(self.batch_size))
        with self.scoring_student() as student:
            s_logits = student(x)
        t_logits = self.teacher(x)
        terms = {"adv": -kd_l1(s_logits, t_logits)}  # the generator ascends the discrepancy
        self.generator_step(self.weighted_total(terms))
        return SynthBatch(images=x.detach(), losses={"adv": float(terms["adv"].detach()),
                                                     "disagreement": self.disagreement(s_logits, t_logits)})
