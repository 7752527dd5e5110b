"""DeepInversion and Adaptive DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020).

Noise optimization: a batch of pixels x (in the teacher's normalized input space, initialized N(0,1)) is
optimized with Adam so that the frozen teacher classifies it as sampled targets y while the statistics of
every BatchNorm input match the running statistics (paper eq. 2-8):

    L(x) = ce * CE(T(x~), y)                                     # eq. 2 (the classification term)
         + bn * sum_l w_l (||mu_l(x~) - mu_l||_2 + ||s2_l(x~) - s2_l||_2)   # eq. 4, w_1 = first_bn_multiplier
         + tv_l2 * R_TV,L2(x~) + tv_l1 * R_TV,L1(x~) + l2 * ||x~||_2        # eq. 3 image priors
         + adi * (1 - clamp(JS_tau=3(S(x~), T(x~)), 0, 1))                   # eq. 8, ADI competition

x~ is x randomly rolled by up to `jitter` pixels and (optionally, whole batch) flipped. After every Adam step
the pixels are clipped to the valid range; the learning rate follows a cosine schedule with a linear warm-up
of `lr_warmup` steps;
the batch returned is the iterate with the lowest total loss (a real clone: the CIFAR reference code's
`best_inputs = inputs.data` aliasing bug is not reproduced). The ADI term scores images with the *current*
student (in eval mode), so it pushes synthesis towards where student and teacher disagree.

Defaults follow the CIFAR-10 reference (bs 256, Adam lr 0.05 as its "paper" setting, where its default is 0.1,
r_feature 10, first BN x10);
the embedded MNIST recipe shortens the iterations to fit a CPU budget.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dfkd.hooks import BNStatHooks
from dfkd.losses import image_l2, js_divergence, tv_l1, tv_l2
from dfkd.synthesizers.base import SYNTHESIZERS, LowestLoss, SynthBatch, Synthesizer
from dfkd.synthesizers.terms import Term


def cosine_lr(base_lr: float, it: int, total: int, lr_warmup: int) -> float:
    """DeepInversion's `lr_cosine_policy`: linear warm-up over `lr_warmup` steps, then cosine to 0."""
    if it < lr_warmup:
        return base_lr * (it + 1) / lr_warmup
    e = it - lr_warmup
    es = max(total - lr_warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr


@SYNTHESIZERS.register("deepinversion")
class DeepInversion(Synthesizer):
    uses_bn_stats = True
    test_settings = {"batch_size": 8, "iterations": 3, "adi": 0.2}
    direction_settings = {"iterations": 10, "lr": 0.25, "keep_best": False}  # both arms: the last, clipped iterate
    objective_terms = {"bn": Term("bn_distance", "lower", "bn"), "ce": Term("teacher_ce_to_targets", "lower", "ce"),
                       "tv_l2": Term("roughness_l2", "lower", "tv_l2"), "tv_l1": Term("roughness", "lower", "tv_l1"),
                       "l2": Term("normalized_image_norm", "lower", "l2"),
                       "adi": Term("teacher_student_js", "raise", "adi")}

    def __init__(self, batch_size: int = 256, iterations: int = 2000, lr: float = 0.05,
                 betas: tuple[float, float] = (0.5, 0.9), lr_warmup: int = 0, bn: float = 10.0,
                 first_bn_multiplier: float = 10.0, ce: float = 1.0, tv_l2: float = 2.5e-5, tv_l1: float = 0.0,
                 l2: float = 0.0, adi: float = 0.0, adi_tau: float = 3.0, jitter: int = 2, flip: bool = False,
                 balanced_targets: bool = True, sync_bn_stats: bool = False, keep_best: bool = True, **data):
        super().__init__(batch_size, **data)
        if iterations < 1:
            raise ValueError("synthesizer.iterations must be >= 1")
        self.iterations, self.lr, self.betas, self.lr_warmup = int(iterations), float(lr), tuple(betas), int(lr_warmup)
        self.w = {"bn": bn, "ce": ce, "tv_l2": tv_l2, "tv_l1": tv_l1, "l2": l2, "adi": adi}
        self.first_bn_multiplier, self.adi_tau = first_bn_multiplier, adi_tau
        self.jitter, self.flip, self.balanced = int(jitter), bool(flip), bool(balanced_targets)
        self.sync_bn_stats, self.keep_best = sync_bn_stats, keep_best
        self.bn_hooks: BNStatHooks | None = None

    def attach(self, teacher, student, ctx):
        super().attach(teacher, student, ctx)
        self.bn_hooks = self.hooks(BNStatHooks(teacher, self.first_bn_multiplier, sync=self.sync_bn_stats))

    def _jitter_flip(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.jitter > 0:
            dx, dy = torch.randint(-self.jitter, self.jitter + 1, (2,), generator=self.rng,
                                   device=self.rng.device).tolist()
            pixels = torch.roll(pixels, shifts=(dx, dy), dims=(2, 3))
        if self.flip and torch.rand((), generator=self.rng, device=self.rng.device).item() < 0.5:
            pixels = torch.flip(pixels, dims=(3,))
        return pixels

    def loss_terms(self, pixels_jit: torch.Tensor, targets: torch.Tensor, student=None) -> dict[str, torch.Tensor]:
        """Every term of L for one (already jittered) batch of normalized pixels; unweighted. `student` (in eval
        mode) scores the images for the ADI term."""
        x01 = self.to_unit(pixels_jit)
        with self.bn_hooks.recording():
            t_logits = self.teacher(x01)
        terms = {"bn": self.bn_hooks.loss(), "ce": F.cross_entropy(t_logits, targets),
                 "tv_l2": tv_l2(pixels_jit), "tv_l1": tv_l1(pixels_jit), "l2": image_l2(pixels_jit)}
        if self.w["adi"] > 0:
            s_logits = (student or self.student)(x01)
            terms["adi"] = 1.0 - js_divergence(s_logits, t_logits, self.adi_tau).clamp(0.0, 1.0)
        terms["acc"] = (t_logits.argmax(1) == targets).float().mean().detach()
        return terms

    def synthesize(self) -> SynthBatch:
        c, h, w = self.ctx.image_shape
        targets = self.sample_targets(self.batch_size, self.balanced)
        pixels = self.randn(self.batch_size, c, h, w).requires_grad_(True)
        lo, hi = (0 - self.data_mean) / self.data_std, (1 - self.data_mean) / self.data_std
        opt = torch.optim.Adam([pixels], lr=self.lr, betas=self.betas, eps=1e-8)
        lowest, last_terms = LowestLoss(), {}

        with self.scoring_student() as student:
            for it in range(self.iterations):
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(self.lr, it, self.iterations, self.lr_warmup)
                terms = self.loss_terms(self._jitter_flip(pixels), targets, student)
                total = self.weighted_total(terms)
                # gradient w.r.t. the pixels only: never accumulates into teacher or student parameters
                (pixels.grad,) = torch.autograd.grad(total, [pixels])
                if self.keep_best:
                    lowest.offer(total, pixels)
                opt.step()
                with torch.no_grad():
                    pixels.copy_(torch.max(torch.min(pixels, hi), lo))
                last_terms = terms

        out = lowest.values[0] if self.keep_best else pixels.detach()
        images = self.to_unit(out).clamp(0, 1)
        logged = {k: float(v.detach()) for k, v in last_terms.items()}
        logged["total"] = float(lowest.loss if self.keep_best else total)
        return SynthBatch(images=images, targets=targets, losses=logged)
