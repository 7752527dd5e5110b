"""CMI: Contrastive Model Inversion for Data-Free Knowledge Distillation (Fang et al., IJCAI 2021), Sec. 3.

Model inversion with a generator that is re-initialized for every batch (so it cannot collapse onto the images it
made before) and a contrastive term that pushes each new image away from the earlier ones. Per synthesize() call,
a fresh generator G (weights N(0, 0.02), BN weights N(1, 0.02)) and latent z are optimized for `g_steps` Adam
steps (lr_g, betas (0.5, 0.999)) on

    L = bn * sum_l (||mu_l(v_g) - mu_l||_2 + ||s2_l(v_g) - s2_l||_2)     # BN statistics of the global view
      + oh * CE(T(v_g), y)                                             # y uniform random labels
      + adv * -mean_i 1[argmax S = argmax T] KL(T||S)_i                # decision-adversarial, as FastDFKD
      + cr * InfoNCE(h(f(v_l)), h(f(v_g)) ++ h(memory), tau = cr_tau)   # instance discrimination

with two views of each image G(z): a global view v_g (the `augment` list, e.g. RandomCrop + flip) and a local view
v_l (RandomResizedCrop with scale `local_scale`, + flip unless `flip: false`). f(v) is the instance feature of
an image in the teacher: the spatial means of the inputs of every BatchNorm layer, concatenated; h is a projection
head MLP(dim -> hidden -> head_dim) trained alongside (its own Adam, lr_g, persistent across calls). Anchors are
the local views; the keys (the global views and `n_neg` features drawn from a memory of earlier batches' global
views) are detached. The lowest-loss iterate's images go to the sample bank and their features to the memory.

Defaults follow the CMI CIFAR scripts (bn 1, oh 1, adv 0.5, cr 0.8, cr_tau 0.1, g_steps 200, lr_g 1e-3,
memory 40,960 features, 4,096 negatives). Differences from the reference code: the memory is a ring buffer of the
global views' features (no divisibility assert on the batch size, whose own message was malformed), it is
checkpointed (a resumed run keeps its negatives), and `head_hidden` can narrow the head for teachers with
thousands of BN channels (null: the feature dimension, as CMI).
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd.augment import CIFAR_AUGMENT, build_augment
from dfkd.hooks import BNStatHooks, FeatureTaps, batchnorm_layers
from dfkd.losses import decision_adversarial_loss, instance_contrastive_loss
from dfkd.models.generators import UpsampleGenerator, reinitialize
from dfkd.synthesizers.base import SYNTHESIZERS, LowestLoss, SynthBatch, Synthesizer
from dfkd.synthesizers.terms import Term


@SYNTHESIZERS.register("cmi")
class CMI(Synthesizer):
    uses_bn_stats = True
    sets_gradients_by_hand = True  # the head's gradients come from torch.autograd.grad: no fp16 loss scaling
    test_settings = {"batch_size": 8, "nz": 8, "ngf": 4, "g_steps": 2, "head_dim": 8, "memory_size": 12, "n_neg": 6}
    direction_settings = {"g_steps": 8, "augment": [{"name": "RandomHorizontalFlip"}]}  # flips keep BN statistics
    objective_terms = {"bn": Term("bn_distance", "lower", "bn"), "oh": Term("teacher_ce_to_targets", "lower", "oh"),
                       "adv": Term("teacher_student_kl_where_agreeing", "raise", "adv"),
                       "cr": Term("instance_similarity", "lower", "cr")}

    def __init__(self, batch_size: int = 256, nz: int = 256, ngf: int = 64, g_steps: int = 200, lr_g: float = 1e-3,
                 bn: float = 1.0, oh: float = 1.0, adv: float = 0.5, cr: float = 0.8, cr_tau: float = 0.1,
                 head_dim: int = 256, head_hidden: int | None = None, memory_size: int = 40960, n_neg: int = 4096,
                 local_scale=(0.25, 1.0), flip: bool = True, first_bn_multiplier: float = 1.0,
                 augment=CIFAR_AUGMENT, **data):
        super().__init__(batch_size, **data)
        c, h, w = self.image_shape
        self.nz, self.g_steps, self.lr_g = int(nz), int(g_steps), float(lr_g)
        self.w = {"bn": bn, "oh": oh, "adv": adv, "cr": cr}
        self.cr_tau, self.head_dim, self.head_hidden = float(cr_tau), int(head_dim), head_hidden
        self.memory_size, self.n_neg, self.first_bn_multiplier = int(memory_size), int(n_neg), first_bn_multiplier
        # rebuilt from scratch every call, so not part of the state (held outside the module tree)
        object.__setattr__(self, "_generator", UpsampleGenerator(nz, ngf, h, c, head="sigmoid"))
        self.augment = build_augment(augment, (h, w))
        local = [{"name": "RandomResizedCrop", "scale": list(local_scale)}]
        self.local_view = build_augment(local + ([{"name": "RandomHorizontalFlip"}] if flip else []), (h, w))
        self.head: nn.Module | None = None
        self.head_opt: torch.optim.Optimizer | None = None
        self.memory: torch.Tensor | None = None  # features of earlier global views, a ring buffer on the CPU
        self.memory_count = 0
        self.bn_hooks: BNStatHooks | None = None
        self.taps: FeatureTaps | None = None

    def check_teacher(self, teacher: nn.Module) -> None:
        """The head's width is the teacher's total BN channel count: built here, before the optimizers are."""
        self._build_head(sum(m.num_features for _, m in batchnorm_layers(teacher)))

    def _build_head(self, dim: int) -> None:
        if self.head is not None:
            return
        hidden = int(self.head_hidden or dim)
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, self.head_dim))
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=self.lr_g, betas=(0.5, 0.999))

    def optimizers(self) -> list[dict]:
        if self.head_opt is None:
            raise RuntimeError("CMI's projection head is sized from the teacher: call check_teacher(teacher) or "
                               "attach(...) before optimizers()")
        return [{"optimizer": self.head_opt}]

    def attach(self, teacher, student, ctx):
        super().attach(teacher, student, ctx)
        bn = batchnorm_layers(teacher)
        self._build_head(sum(m.num_features for _, m in bn))
        self.head.to(ctx.device)
        self._generator.to(ctx.device)
        self.bn_hooks = self.hooks(BNStatHooks(teacher, self.first_bn_multiplier))
        self.taps = self.hooks(FeatureTaps(teacher, [n for n, _ in bn], io="input"))

    def extra_state(self) -> dict:
        state = super().extra_state()
        state.update(memory=self.memory, memory_count=self.memory_count)
        return state

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.memory, self.memory_count = state.get("memory"), int(state.get("memory_count", 0))

    def instance_features(self) -> torch.Tensor:
        """The last teacher forward's instance features: per-channel spatial means of every BN input."""
        return torch.cat([t.flatten(2).mean(2) if t.dim() > 2 else t for t in self.taps.outputs.values()], dim=1)

    def negatives(self) -> torch.Tensor | None:
        """`n_neg` features drawn from the memory (all of it when it holds fewer), on the device."""
        filled = min(self.memory_count, self.memory_size)
        if filled == 0 or self.n_neg <= 0:
            return None
        idx = torch.randperm(filled, generator=self.rng, device=self.rng.device)[: self.n_neg].cpu()
        return self.memory[idx].to(self.ctx.device, torch.float32)

    def remember(self, features: torch.Tensor) -> None:
        if self.memory is None:
            self.memory = torch.zeros(self.memory_size, features.shape[1], dtype=torch.float16)
        rows = torch.arange(self.memory_count, self.memory_count + features.shape[0]) % self.memory_size
        self.memory[rows] = features.detach().to("cpu", torch.float16)
        self.memory_count += features.shape[0]

    def loss_terms(self, x, targets, negatives, student) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every term of L for the images x ([0,1] space), unweighted, and the global views' instance features."""
        global_view, local_view = self.augment(x), self.local_view(x)
        with self.bn_hooks.recording():
            t_logits = self.teacher(global_view)
        f_global = self.instance_features()
        self.teacher(local_view)
        f_local = self.instance_features()
        terms = {"bn": self.bn_hooks.loss(), "oh": F.cross_entropy(t_logits, targets)}
        if self.w["adv"] > 0:
            terms["adv"] = decision_adversarial_loss(student(global_view), t_logits)
        keys = f_global if negatives is None else torch.cat([f_global, negatives])
        with torch.no_grad():
            key_proj = self.head(keys)
        terms["cr"] = instance_contrastive_loss(self.head(f_local), key_proj, self.cr_tau)
        return terms, f_global

    def synthesize(self) -> SynthBatch:
        g = self._generator.train()
        reinitialize(g, self.rng)
        z = self.randn(self.batch_size, self.nz).requires_grad_(True)
        targets = self.sample_targets(self.batch_size, balanced=False)
        inner = torch.optim.Adam([{"params": g.parameters()}, {"params": [z]}], lr=self.lr_g, betas=(0.5, 0.999))
        g_params, head_params = list(g.parameters()), list(self.head.parameters())
        negatives = self.negatives()
        lowest, terms = LowestLoss(), {}
        with self.scoring_student() as student:
            for _ in range(self.g_steps):
                x = g(z)
                terms, f_global = self.loss_terms(x, targets, negatives, student)
                total = self.weighted_total(terms)
                grads = torch.autograd.grad(total, g_params + [z] + head_params)  # local: never teacher or student
                lowest.offer(total, x, f_global)
                for p, gr in zip(g_params + [z] + head_params, grads):
                    p.grad = gr
                inner.step()
                self.average_gradients(head_params)
                self.ctx.step(self.head_opt)
                self.head_opt.zero_grad(set_to_none=True)
        best_x, best_f = lowest.values
        self.remember(best_f)
        logged = {k: float(v.detach()) for k, v in terms.items()}
        logged["total"] = float(lowest.loss)
        return SynthBatch(images=best_x, targets=targets, losses=logged)
