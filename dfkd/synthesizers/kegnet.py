"""KegNet: Knowledge Extraction with No Observable Data (Yoo et al., NeurIPS 2019), eq. 4-6.

An ensemble of `generators` label-conditioned generators G_k(y, z), each with a decoder D_k, trained against
the fixed classifier T:

    L_k = KL(y || softmax T(G_k(y, z)))                          # eq. 4: y one-hot, so this is CE(T(.), y)
        + alpha * ||D_k(G_k(y, z)) - z||^2                       # eq. 5: the decoder recovers the noise
        + beta * exp(-mean_{i,j} d_z(i,j) * d_x(i,j))           # eq. 6: diversity, d_z mean squared noise
                                                                #   distance, d_x mean absolute image distance
Each synthesize() call takes one Adam step of every (G_k, D_k) pair (one optimizer each, Lightning-owned);
the student then distills (KL, tau = 1) on fresh samples drawn evenly from all generators. The paper trains
the generators first and samples a fixed set afterwards; here that is `distill.synthesis_only_iterations`
(generator-only iterations) followed by joint training. KegNet's student is the teacher compressed by Tucker
decomposition: `student=tucker` (dfkd.models.tucker). Defaults: the paper's MNIST settings
(5 generators, noise 10-d, decoder 1 hidden layer, Adam 1e-3, alpha 1, beta 0).

Options beyond the paper, off by default: `head: sigmoid` ends the generators in a Sigmoid ([0,1] images) instead
of Tanh and per-image standardization; `tv` and `l2` add DeepInversion's image priors (Yin et al. 2020, eq. 3),
tv * R_TV,L1(x) (mean absolute difference of neighbouring pixels) and l2 * ||x||_2 (per-image norm in [0,1]
space, which favours dark backgrounds); `adv` adds an adversarial term, -adv * KL(T(x) || S(x)) at
tau 1 (the student scoring in eval mode), so that the generators also seek the images on which the student
still differs from the teacher (as ZSKT/DFAD do).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from dfkd.losses import image_l2, kd_kl, tv_l1
from dfkd.models.generators import KegNetDecoder, KegNetGenerator
from dfkd.synthesizers.base import SYNTHESIZERS, SynthBatch, Synthesizer
from dfkd.synthesizers.terms import MEASURES, Term


def diversity_loss(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """KegNet eq. 6: exp(-mean_{i,j} d_z(i,j) * d_x(i,j)), d_z = mean squared difference of noise vectors,
    d_x = mean absolute difference of flattened images, over all pairs (i, j) of the batch."""
    dz = (z.unsqueeze(1) - z.unsqueeze(0)).pow(2).mean(-1)
    xf = x.flatten(1)
    dx = (xf.unsqueeze(1) - xf.unsqueeze(0)).abs().mean(-1)
    return torch.exp(-(dz * dx).mean())


def decoder_noise_error(syn: "KegNet", batch=None, n: int = 32) -> float:
    """How far each decoder is from recovering the noise its generator was given: mean squared error over n fixed
    (y, z) draws per generator (a measure of `dfkd.synthesizers.terms`; the generators' state is left as it was)."""
    g = torch.Generator().manual_seed(0)
    errors = []
    for gen, dec in zip(syn.generators, syn.decoders):
        y = torch.randint(syn.num_classes, (n,), generator=g).to(syn.ctx.device)
        z = torch.randn(n, syn.nz, generator=g).to(syn.ctx.device)
        gen = copy.deepcopy(gen).train()  # batch statistics, as in training, without moving the running ones
        errors.append(float((dec(gen(F.one_hot(y, syn.num_classes).float(), z)) - z).pow(2).mean()))
    return sum(errors) / len(errors)


MEASURES["decoder_noise_error"] = decoder_noise_error


@SYNTHESIZERS.register("kegnet")
class KegNet(Synthesizer):
    bounded_images = False  # the paper's head standardizes each image; `head="sigmoid"` sets it True
    test_settings = {"batch_size": 8, "generators": 2, "nz": 4, "beta": 1.0, "tv": 0.1, "adv": 0.1}
    direction_settings = {"head": "sigmoid"}  # the l2 prior acts on [0,1] images only (see __init__)
    objective_terms = {"cls": Term("teacher_ce_to_targets", "lower"),
                       "dec": Term("decoder_noise_error", "lower", "alpha"),
                       "div": Term("image_spread", "raise", "beta"), "tv": Term("roughness", "lower", "tv"),
                       "l2": Term("image_norm", "lower", "l2"), "adv": Term("teacher_student_kl", "raise", "adv")}
    def __init__(self, batch_size: int = 256, generators: int = 5, nz: int = 10, width: int = 1, dec_layers: int = 1,
                 lr: float = 1e-3, alpha: float = 1.0, beta: float = 0.0, head: str = "standardize", tv: float = 0.0,
                 l2: float = 0.0, adv: float = 0.0, **data):
        super().__init__(batch_size, **data)
        if l2 and head != "sigmoid":
            raise ValueError(f"synthesizer.l2={l2} does nothing with head={head}: each image is standardized, so "
                             f"its norm is fixed. Use head=sigmoid with l2, or l2=0.")
        c, h, w = self.image_shape
        self.nz, self.w = int(nz), {"cls": 1.0, "dec": alpha, "div": beta, "tv": tv, "l2": l2, "adv": adv}
        self.bounded_images = head == "sigmoid"
        self.generators = torch.nn.ModuleList(KegNetGenerator(self.num_classes, nz, c, h, width, head)
                                              for _ in range(generators))
        self.decoders = torch.nn.ModuleList(KegNetDecoder(c * h * w, nz, 120, dec_layers) for _ in range(generators))
        self.opts = [torch.optim.Adam(list(g.parameters()) + list(d.parameters()), lr=lr)
                     for g, d in zip(self.generators, self.decoders)]

    def optimizers(self) -> list[dict]:
        return [{"optimizer": o} for o in self.opts]

    def _generate(self, k: int, n: int):
        y = torch.randint(self.num_classes, (n,), generator=self.rng, device=self.rng.device).to(self.ctx.device)
        z = self.randn(n, self.nz)
        self.generators[k].train(n > 1)  # batch statistics, except for a single sample
        return y, z, self.generators[k](F.one_hot(y, self.num_classes).float(), z)

    def loss_terms(self, k: int, y, z, x) -> dict[str, torch.Tensor]:
        """Every term of generator k's loss for its images x (generator output space), unweighted; the terms
        beyond the paper only when their weight is on."""
        x01 = self.unit(x)
        t_logits = self.teacher(x01)
        terms = {"cls": F.cross_entropy(t_logits, y), "dec": F.mse_loss(self.decoders[k](x), z),
                 "div": diversity_loss(z, x)}
        if self.w["tv"]:
            terms["tv"] = tv_l1(x01)
        if self.w["l2"]:
            terms["l2"] = image_l2(x01)
        if self.w["adv"]:
            with self.scoring_student() as student:
                terms["adv"] = -kd_kl(student(x01), t_logits)
        return terms

    def synthesize(self) -> SynthBatch:
        images, targets, logged = [], [], {}
        for k, opt in enumerate(self.opts):
            y, z, x = self._generate(k, self.batch_size)
            terms = self.loss_terms(k, y, z, x)
            loss = self.weighted_total(terms)
            opt.zero_grad(set_to_none=True)
            self.ctx.backward(loss)
            self.ctx.step(opt)
            for n, v in terms.items():
                logged[n] = logged.get(n, 0.0) + float(v.detach()) / len(self.opts)
            images.append(self.unit(x.detach()))
            targets.append(y)
        return SynthBatch(images=torch.cat(images), targets=torch.cat(targets), losses=logged)

    def sample(self, n: int) -> torch.Tensor:
        """n fresh images, split evenly over the generators."""
        k = len(self.generators)
        sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
        with torch.no_grad():
            return torch.cat([self.unit(self._generate(i, m)[2]) for i, m in enumerate(sizes) if m > 0])
