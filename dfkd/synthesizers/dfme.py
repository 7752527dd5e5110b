"""DFME: Data-Free Model Extraction (Truong et al., CVPR 2021), Sec. 3: DFAD's min-max game when the teacher is a
black box that returns class probabilities only (`teacher.access=scores`).

    student:    min_S  mean |S(x) - l_T(x)|,   x = G(z)                 (distill.kd_loss=l1, fresh G(z) per step)
    generator:  max_G  L(x) = mean |S(x) - l_T(x)|
where l_T(x) = log p_T(x) - mean_j log p_T(x)_j are the teacher's logits recovered from its probabilities
(Sec. 3.3; `dfkd.teachers.logits_from_answers`). The teacher gives no gradient, so dL/dx is estimated by forward
differences along `directions` (m) random unit directions u_i per image (Sec. 3.2, eq. 6):

    grad_x L ~ (1/m) sum_i  d * (L(x + eps u_i) - L(x)) / eps * u_i,    d = C*H*W,
and back-propagated into G through x (the surrogate sum(x * grad_x)). A generator step costs batch_size * (m + 1)
queries; each student step costs its fresh images' queries. Paper defaults (CIFAR-10): nz 256, Adam lr_G 5e-4,
m = 1, eps = 1e-3, batch 256, 5 student steps (SGD lr 0.1) per generator step, an L1 student loss.

The generator's head is DFME's Tanh -> BN (`head: tanh_bn`), its images standardized to the data's mean and std
and sent unclamped, as the paper sends them (they may leave [0,1]). `head: sigmoid` bounds them, but a fresh
Sigmoid generator's images are near mid-grey and a LeNet teacher calls them all one class, so the first queries
teach nothing (docs/notes/black-box.md). The teacher's answers for the generator's own images, paid for in queries,
are passed to the loop's replay memory (`distill.replay`), where they are kept for later student steps rather than
dropped; DFME itself trains the student on fresh queries only.

`info` (default 0, the paper) adds DAFL's class-balance term (Chen et al. 2019, eq. 4) to the generator's objective,
computed on the student's softmax for the generator's images: info * sum_c pbar_c log10 pbar_c. It costs no
queries (the student is the user's own model) and counters the game's drift to a few of the teacher's classes: on
the MNIST LeNet, a DFME generator's queries fall 0-3 % in each of four classes (docs/notes/black-box.md).

The forward differences need the service to take float images: a service that rounds to 8-bit pixels erases
eps-sized steps.
"""
from __future__ import annotations

import torch

from dfkd.teachers.black_box import logits_from_answers
from dfkd.losses import information_entropy_loss
from dfkd.synthesizers.base import SYNTHESIZERS, SynthBatch
from dfkd.synthesizers.generative import GeneratorSynthesizer
from dfkd.synthesizers.terms import Term


def per_image_l1(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """|S(x) - l_T(x)| averaged over classes, one value per image."""
    return (s_logits - t_logits).abs().mean(dim=1)


@SYNTHESIZERS.register("dfme")
class DFME(GeneratorSynthesizer):
    access = "scores"
    test_settings = {"batch_size": 8, "nz": 8, "ngf": 4, "directions": 2}
    objective_terms = {"adv": Term("teacher_student_l1_of_answers", "raise"),
                       "info": Term("student_class_balance", "raise", "info")}

    def __init__(self, batch_size: int = 256, nz: int = 256, ngf: int = 64, lr: float = 5e-4, betas=(0.9, 0.999),
                 directions: int = 1, epsilon: float = 1e-3, head: str = "tanh_bn", cosine_steps: int | None = None,
                 info: float = 0.0, **data):
        super().__init__(batch_size, nz=nz, ngf=ngf, head=head, lr=lr, betas=betas, cosine_steps=cosine_steps,
                         fresh_samples=True, **data)
        if int(directions) < 1 or float(epsilon) <= 0:
            raise ValueError(f"DFME needs directions >= 1 and epsilon > 0, got {directions} and {epsilon}")
        self.directions, self.epsilon = int(directions), float(epsilon)
        self.w = {"adv": 1.0, "info": float(info)}

    def random_directions(self, x: torch.Tensor) -> torch.Tensor:
        """m unit directions per image, uniform on the sphere of the image space: [m, N, C, H, W]."""
        u = self.randn(self.directions, *x.shape)
        return u / u.flatten(2).norm(dim=2).view(self.directions, x.shape[0], 1, 1, 1)

    def estimate_gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(forward-difference estimate of dL/dx per image, L(x) per image, the teacher's recovered logits at x).
        One query per image for x and one per image and direction."""
        u = self.random_directions(x)
        m, n = u.shape[0], x.shape[0]
        probes = torch.cat([x, (x.unsqueeze(0) + self.epsilon * u).flatten(0, 1)])  # x, then x + eps u_i
        t_logits = logits_from_answers(self.teacher_probabilities(probes))
        with self.scoring_student() as student, torch.no_grad():
            loss = per_image_l1(student(probes), t_logits)
        base, moved = loss[:n], loss[n:].view(m, n)
        d = x[0].numel()
        slope = d * (moved - base) / self.epsilon                      # [m, N]
        grad = (slope.view(m, n, 1, 1, 1) * u).mean(0)
        return grad, base, t_logits[:n]

    def synthesize(self) -> SynthBatch:
        x = self.generate(self.latents(self.batch_size))
        grad, loss, t_logits = self.estimate_gradient(x.detach())
        # ascend L: the surrogate -sum(x * grad) / N has gradient -(1/N) grad . dx/dtheta (its value is not L)
        terms = {"adv": -(x * grad).sum() / x.shape[0]}
        losses = {"adv": float(-loss.mean())}
        if self.w["info"]:
            with self.scoring_student() as student:
                terms["info"] = information_entropy_loss(student(x))
            losses["info"] = float(terms["info"].detach())
        self.generator_step(self.weighted_total(terms))
        return SynthBatch(images=x.detach(), losses=losses, teacher_logits=t_logits)
