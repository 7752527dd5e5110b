"""NAYER: Noisy Layer Generation for Data-Free Knowledge Distillation (Tran et al., CVPR 2024), Sec. 3.

The randomness moves from the input noise to a layer: the generator's input is the embedding e_y of the class
label, and a "noisy layer" (a Linear map, one per chunk of `num_classes` samples, re-initialized N(0, 1) at every
synthesize() call) turns it into the code the rest of the generator decodes:

    x = G(NL(BN(e_y)))        G: the FastDFKD trunk with a Sigmoid head ([0,1] images)

Per synthesize() call the noisy layers are drawn afresh and, with the persistent generator G, optimized for
`g_steps` Adam steps (lr_g, betas (0.5, 0.999)) on FastDFKD's loss

    L = bn * R_BN^mmt(A(x)) + oh * CE(T(A(x)), y) + adv * L_adv(S, T)

with class-balanced labels y, R_BN^mmt the BN-statistics loss against a momentum blend of batch statistics (as
FastDFKD), L_adv the decision-adversarial term once `adversarial_after` calls have passed, and A the `augment`
list. The lowest-loss iterate's images go to the sample bank. Every `generator_life` calls G itself is
re-initialized (the paper's "g_life"), identically on every rank. Because a new noisy layer maps the same label to
a new code each call, G learns to decode many codes of a class instead of fitting one batch, which is why NAYER
needs few steps per batch (the paper: 30 on CIFAR-10 against CMI's 200-500).

Label embeddings: the paper encodes the class names with CLIP's text encoder. dfkd downloads nothing and needs no
class names, so its default is the one-hot code of each class (`label_embeddings: null`): it carries the class
identity and nothing else (every pair of classes equally far apart, where CLIP places similar classes close).
`label_embeddings: PATH` loads a float tensor of shape [num_classes, dim] saved with `torch.save` (e.g. CLIP
text embeddings computed elsewhere), row c for class c.

Not reproduced from the reference code: its scripts pass a `--method` its argument parser rejects, it imports and
starts wandb unconditionally, and its generator re-initialization is hard-wired to CUDA.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd.augment import CIFAR_AUGMENT, build_augment
from dfkd.errors import DfkdError
from dfkd.losses import decision_adversarial_loss
from dfkd.models.generators import UpsampleGenerator
from dfkd.synthesizers.base import SYNTHESIZERS, LowestLoss, SynthBatch, Synthesizer
from dfkd.synthesizers.momentum_bn import MomentumBNStatistics
from dfkd.synthesizers.terms import Term


def load_label_embeddings(path: str | None, num_classes: int) -> torch.Tensor:
    """[num_classes, dim] float embeddings: the file at `path` (torch.save of a tensor), or one-hot codes."""
    if path is None:
        return torch.eye(num_classes)
    p = Path(path).expanduser()
    if not p.is_file():
        raise DfkdError(f"synthesizer.label_embeddings={path}: no such file. Give a tensor file of shape "
                        f"[{num_classes}, dim] (torch.save), or null for one-hot class codes.")
    emb = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != num_classes:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise DfkdError(f"synthesizer.label_embeddings={path} holds {shape}; NAYER needs a float tensor of shape "
                        f"[{num_classes}, dim], row c the embedding of class c.")
    return emb.float()


class NoisyLayerGenerator(nn.Module):
    """Label embedding -> BN1d -> noisy layer (given per call: weights [chunks, dim, noise_dim], bias
    [chunks, noise_dim]; sample i uses chunk i // num_classes) -> UpsampleGenerator (Sigmoid head)."""

    def __init__(self, embeddings: torch.Tensor, noise_dim: int, ngf: int, image_size: int, channels: int):
        super().__init__()
        self.register_buffer("embeddings", embeddings.clone())
        self.noise_dim = int(noise_dim)
        self.bn = nn.BatchNorm1d(embeddings.shape[1])
        self.trunk = UpsampleGenerator(noise_dim, ngf, image_size, channels, head="sigmoid")

    def forward(self, targets: torch.Tensor, noisy_w: torch.Tensor, noisy_b: torch.Tensor) -> torch.Tensor:
        e = self.bn(self.embeddings[targets])
        chunk = torch.arange(targets.shape[0], device=targets.device) // self.embeddings.shape[0]
        code = torch.bmm(e.unsqueeze(1), noisy_w[chunk]).squeeze(1) + noisy_b[chunk]
        return self.trunk(code)


@SYNTHESIZERS.register("nayer")
class NAYER(MomentumBNStatistics, Synthesizer):
    uses_bn_stats = True
    sets_gradients_by_hand = True  # gradients averaged over ranks by hand (torch.autograd.grad): no fp16 scaling
    test_settings = {"batch_size": 8, "noise_dim": 8, "ngf": 4, "g_steps": 2, "adversarial_after": 1,
                     "generator_life": 3}
    direction_settings = {"g_steps": 8, "augment": [{"name": "RandomHorizontalFlip"}]}  # flips keep BN statistics
    objective_terms = {"bn": Term("bn_distance", "lower", "bn"), "oh": Term("teacher_ce_to_targets", "lower", "oh"),
                       "adv": Term("teacher_student_kl_where_agreeing", "raise", "adv")}

    def __init__(self, batch_size: int = 400, noise_dim: int = 1000, ngf: int = 64, g_steps: int = 30,
                 lr_g: float = 4e-3, bn: float = 10.0, oh: float = 0.5, adv: float = 1.33, bn_momentum: float = 0.9,
                 adversarial_after: int = 20, generator_life: int | None = None, label_embeddings: str | None = None,
                 first_bn_multiplier: float = 1.0, augment=CIFAR_AUGMENT, **data):
        super().__init__(batch_size, **data)
        c, h, w = self.image_shape
        self.g_steps, self.lr_g, self.ngf = int(g_steps), float(lr_g), int(ngf)
        self.w = {"bn": bn, "oh": oh, "adv": adv}
        self.bn_momentum, self.adversarial_after = bn_momentum, int(adversarial_after)
        self.generator_life, self.first_bn_multiplier = generator_life, first_bn_multiplier
        embeddings = load_label_embeddings(label_embeddings, self.num_classes)
        self.generator = NoisyLayerGenerator(embeddings, noise_dim, ngf, h, c)
        self.opt = torch.optim.Adam(self.generator.parameters(), lr=self.lr_g, betas=(0.5, 0.999))
        self.augment = build_augment(augment, (h, w))
        self.calls = 0

    def optimizers(self) -> list[dict]:
        return [{"optimizer": self.opt}]

    def balanced_targets(self) -> torch.Tensor:
        """Every class once per chunk of num_classes samples (the last chunk: a random subset of classes)."""
        k, n = self.ctx.num_classes, self.batch_size
        full = torch.arange(n - n % k, device=self.ctx.device) % k
        rest = torch.randperm(k, generator=self.rng, device=self.rng.device)[: n % k].to(self.ctx.device)
        return torch.cat([full, rest])

    def noisy_layers(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh N(0, 1) weights and biases for the ceil(n / num_classes) noisy layers of one call."""
        chunks, dim = math.ceil(n / self.ctx.num_classes), self.generator.embeddings.shape[1]
        w = self.randn(chunks, dim, self.generator.noise_dim).requires_grad_(True)
        return w, self.randn(chunks, self.generator.noise_dim).requires_grad_(True)

    def renew_generator(self) -> None:
        """A new generator, identical on every rank (a seed shared by the ranks), and a fresh optimizer state."""
        with torch.random.fork_rng(devices=[]):  # the global RNG stream stays as it was
            torch.manual_seed(int(self.ctx.seed) * 7919 + self.calls)
            fresh = NoisyLayerGenerator(self.generator.embeddings.cpu(), self.generator.noise_dim, self.ngf,
                                        self.image_shape[1], self.image_shape[0])
        self.generator.load_state_dict(fresh.state_dict())
        self.opt.state.clear()

    def loss_terms(self, x, targets, student=None) -> dict[str, torch.Tensor]:
        xa = self.augment(x)
        with self.bn_hooks.recording():
            t_logits = self.teacher(xa)
        terms = {"bn": self.bn_hooks.loss(), "oh": F.cross_entropy(t_logits, targets)}
        if student is not None and self.w["adv"] > 0:
            terms["adv"] = decision_adversarial_loss(student(xa), t_logits)
        return terms

    def synthesize(self) -> SynthBatch:
        self.calls += 1
        if self.generator_life and self.calls > 1 and (self.calls - 1) % int(self.generator_life) == 0:
            self.renew_generator()
        g = self.generator.train()
        targets = self.balanced_targets()
        noisy_w, noisy_b = self.noisy_layers(self.batch_size)
        noisy_opt = torch.optim.Adam([noisy_w, noisy_b], lr=self.lr_g, betas=(0.5, 0.999))
        params = list(g.parameters())
        adversarial = self.calls > self.adversarial_after
        lowest, terms = LowestLoss(), {}
        with self.scoring_student() as student:
            for _ in range(self.g_steps):
                x = g(targets, noisy_w, noisy_b)
                terms = self.loss_terms(x, targets, student if adversarial else None)
                total = self.weighted_total(terms)
                grads = torch.autograd.grad(total, params + [noisy_w, noisy_b])  # never teacher or student
                lowest.offer(total, x)
                for p, gr in zip(params + [noisy_w, noisy_b], grads):
                    p.grad = gr
                noisy_opt.step()
                self.average_gradients(params)
                self.ctx.step(self.opt)
                self.opt.zero_grad(set_to_none=True)
        self.bn_hooks.update_ema()
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["total"] = float(lowest.loss)
        return SynthBatch(images=lowest.values[0], targets=targets, losses=logged)
