"""IDEAL: Query-Efficient Data-Free Learning from Black-box Models (Zhang et al., ICLR 2023), Sec. 3: distillation
from a teacher that returns its top-1 label only (`teacher.access=label`), asking it about each image once.

Why this label-only method: it is data-free (DFMS-HL, the other published hard-label method, needs a proxy data
set to train its GAN), and it spends queries only on images worth labelling: the generator is trained against
the student alone, at no query cost, and only its final images are sent.

Each synthesize() call (a round):
  1. `g_steps` Adam steps of the generator G on the student only (frozen, eval mode), for labels y drawn
     class-balanced and fed to G beside z (dfkd's reading: G(z, onehot(y))):
         L_G = CE(S(G(z, y)), y) + info * sum_c pbar_c log10 pbar_c      (pbar: the batch-mean student softmax;
                                                                         the second term, DAFL's eq. 4, spreads
                                                                         the images over the classes)
  2. the round's images x = G(z', y') are sent to the teacher once: batch_size queries, labels back;
  3. the student learns them with CE on the teacher's labels (distill.kd_loss=ce) from the loop's replay memory
     (distill.replay.fraction=1: every step trains on remembered answers only; no image is asked about twice).
Defaults follow the paper's CIFAR-10 setting as far as dfkd reads it (nz 256, lr_G 1e-3, info 5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dfkd.blackbox import logits_from_answers
from dfkd.losses import information_entropy_loss
from dfkd.synthesizers.base import SYNTHESIZERS, SynthBatch
from dfkd.synthesizers.generative import GeneratorSynthesizer


@SYNTHESIZERS.register("ideal")
class IDEAL(GeneratorSynthesizer):
    access = "label"
    test_settings = {"batch_size": 8, "nz": 8, "ngf": 4, "g_steps": 2}

    def __init__(self, batch_size: int = 256, nz: int = 256, ngf: int = 64, lr: float = 1e-3, betas=(0.5, 0.999),
                 g_steps: int = 20, info: float = 5.0, head: str = "sigmoid", **data):
        super().__init__(batch_size, nz=int(nz) + int(data["num_classes"]), ngf=ngf, head=head, lr=lr,
                         betas=betas, **data)
        self.noise_dim, self.g_steps, self.info = int(nz), int(g_steps), float(info)

    def conditioned_latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.sample_targets(n)
        return torch.cat([self.randn(n, self.noise_dim), F.one_hot(y, self.num_classes).float()], dim=1), y

    def synthesize(self) -> SynthBatch:
        losses = {}
        with self.scoring_student() as student:
            for _ in range(self.g_steps):
                z, y = self.conditioned_latents(self.batch_size)
                logits = student(self.generate(z))
                ce, info = F.cross_entropy(logits, y), information_entropy_loss(logits)
                self.generator_step(ce + self.info * info)
                losses = {"ce": float(ce.detach()), "info": float(info.detach())}
        z, y = self.conditioned_latents(self.batch_size)
        with torch.no_grad():
            x = self.generate(z)
        answers = self.teacher_probabilities(x)  # one query per image: the teacher's label (one-hot)
        losses["teacher_agrees"] = float((answers.argmax(1) == y).float().mean())
        return SynthBatch(images=x, targets=y, losses=losses, teacher_logits=logits_from_answers(answers))
