"""FastDFKD: "Up to 100x Faster Data-free Knowledge Distillation" (Fang et al., AAAI 2022), Sec. 3-4, Alg. 1.

A meta-learned generator G (sigmoid output, [0,1] images) that adapts to each new batch in a few steps.
Per synthesize() call:
  1. a fast copy G' of G and a fresh latent z are optimized for `g_steps` steps with Adam
     ([G': lr_g], [z: lr_z], betas (0.5, 0.999)) on
         L = bn * R_BN^mmt(A(G'(z))) + oh * CE(T(A(G'(z))), y) + adv * L_adv
     y uniform random labels; A = differentiable augmentation (RandomCrop + flip on CIFAR, kornia);
     R_BN^mmt compares BN running stats with 0.1 * batch stats + 0.9 * an EMA of earlier batches;
     L_adv = -mean_i 1[argmax S = argmax T] KL(T||S)_i (decision-adversarial), enabled once `adversarial_after`
     calls have passed (the reference code's `warmup`);
  2. meta update of G: first-order MAML (the inner gradients of G' summed into G's gradient) or Reptile
     (gradient alpha * (G - G')), then one Adam step of the meta optimizer (lr lr_g * g_steps);
     under DDP the meta gradient is averaged over ranks, so every rank keeps the same G;
  3. the lowest-loss inner iterate's images go to the sample bank, from which the student trains.
At call `reset_l0_at` the first Linear and first BN of G are re-initialized N(0, 0.02) (FAST's `reset_l0`,
"helps with diversity"), from an RNG that is the same on every rank.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd.augment import CIFAR_AUGMENT, build_augment
from dfkd.losses import decision_adversarial_loss
from dfkd.models.generators import UpsampleGenerator
from dfkd.synthesizers.base import SYNTHESIZERS, LowestLoss, SynthBatch, Synthesizer
from dfkd.synthesizers.momentum_bn import MomentumBNStatistics
from dfkd.synthesizers.terms import Term


@SYNTHESIZERS.register("fastdfkd")
class FastDFKD(MomentumBNStatistics, Synthesizer):
    sets_gradients_by_hand = True  # the meta-gradient: fp16 loss scaling would not apply to it (dfkd/loop/module.py)
    uses_bn_stats = True
    test_settings = {"batch_size": 8, "nz": 8, "ngf": 4, "g_steps": 2, "adversarial_after": 3, "reset_l0_at": 5,
                     "augment": [{"name": "RandomHorizontalFlip"}]}
    objective_terms = {"bn": Term("bn_distance", "lower", "bn"), "oh": Term("teacher_ce_to_targets", "lower", "oh"),
                       "adv": Term("teacher_student_kl_where_agreeing", "raise", "adv")}

    def __init__(self, batch_size: int = 256, nz: int = 256, ngf: int = 64, g_steps: int = 2, lr_g: float = 5e-3,
                 lr_z: float = 0.015, meta_lr: float | None = None, bn: float = 10.0, oh: float = 0.4,
                 adv: float = 1.1, bn_momentum: float = 0.9, adversarial_after: int = 20, meta: str = "maml",
                 reptile_alpha: float = 67.0, reset_l0_at: int | None = 140, first_bn_multiplier: float = 1.0,
                 augment=CIFAR_AUGMENT, **data):
        super().__init__(batch_size, **data)
        if meta not in ("maml", "reptile"):
            raise ValueError(f"synthesizer.meta must be 'maml' or 'reptile', got {meta!r}")
        c, h, w = self.image_shape
        self.nz, self.g_steps, self.lr_g, self.lr_z = int(nz), int(g_steps), lr_g, lr_z
        self.w = {"bn": bn, "oh": oh, "adv": adv}
        self.bn_momentum, self.adversarial_after, self.meta = bn_momentum, int(adversarial_after), meta
        self.reptile_alpha, self.reset_l0_at = reptile_alpha, reset_l0_at
        self.first_bn_multiplier = first_bn_multiplier
        self.generator = UpsampleGenerator(nz, ngf, h, c, head="sigmoid")
        self.meta_opt = torch.optim.Adam(self.generator.parameters(), lr=meta_lr or lr_g * self.g_steps,
                                         betas=(0.5, 0.999))
        self.augment = build_augment(augment, (h, w))
        self.calls = 0

    def optimizers(self) -> list[dict]:
        return [{"optimizer": self.meta_opt}]

    def reset_l0(self) -> None:
        """Re-initialize G's first Linear and first BN, identically on every rank (shared seed, not per rank)."""
        g = torch.Generator().manual_seed(int(self.ctx.seed) * 7919 + self.calls)
        with torch.no_grad():
            for m in (self.generator.l1, self.generator.bn0):
                m.weight.copy_(torch.normal(0.0, 0.02, m.weight.shape, generator=g))
                m.bias.zero_()

    def loss_terms(self, fast: nn.Module, z: torch.Tensor, targets: torch.Tensor, student=None):
        """The inner loss terms for latents z through the fast generator; `student` (eval mode) given once the
        adversarial term is on."""
        x = fast(z)
        xa = self.augment(x)
        with self.bn_hooks.recording():
            t_logits = self.teacher(xa)
        terms = {"bn": self.bn_hooks.loss(), "oh": F.cross_entropy(t_logits, targets)}
        if student is not None and self.w["adv"] > 0:
            s_logits = student(xa)
            terms["adv"] = decision_adversarial_loss(s_logits, t_logits)
            terms["disagreement"] = (s_logits.argmax(1) != t_logits.argmax(1)).float().mean()
        return x, terms

    def synthesize(self) -> SynthBatch:
        self.calls += 1
        if self.reset_l0_at and self.calls == self.reset_l0_at:
            self.reset_l0()
        fast = copy.deepcopy(self.generator).train()
        z = self.randn(self.batch_size, self.nz).requires_grad_(True)
        targets = torch.randint(self.ctx.num_classes, (self.batch_size,), generator=self.rng,
                                device=self.rng.device).to(self.ctx.device)
        inner = torch.optim.Adam([{"params": fast.parameters(), "lr": self.lr_g}, {"params": [z], "lr": self.lr_z}],
                                 betas=(0.5, 0.999))
        meta_params, fast_params = list(self.generator.parameters()), list(fast.parameters())
        for p in meta_params:
            p.grad = torch.zeros_like(p)
        adversarial = self.calls > self.adversarial_after
        lowest, terms = LowestLoss(), {}

        with self.scoring_student() as student:
            for _ in range(self.g_steps):
                x, terms = self.loss_terms(fast, z, targets, student if adversarial else None)
                total = self.weighted_total(terms)
                grads = torch.autograd.grad(total, fast_params + [z])  # local: never reaches teacher or student
                lowest.offer(total, x)
                for mp, fp, g in zip(meta_params, fast_params, grads[:-1]):
                    fp.grad = g
                    if self.meta == "maml":
                        mp.grad += g  # first-order MAML: inner gradients summed into the meta gradient
                z.grad = grads[-1]
                inner.step()
        if self.meta == "reptile":
            for mp, fp in zip(meta_params, fast_params):
                mp.grad = self.reptile_alpha * (mp.detach() - fp.detach())
        self.average_gradients(self.generator.parameters())
        self.ctx.step(self.meta_opt)
        self.meta_opt.zero_grad(set_to_none=True)
        self.bn_hooks.update_ema()
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["total"] = float(lowest.loss)
        return SynthBatch(images=lowest.values[0], targets=targets, losses=logged)
