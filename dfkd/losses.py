"""Loss terms shared by the synthesizers and the distillation loop. Each is small and unit-tested against a
hand computation (tests/test_losses.py). Each cites its paper and equation; where the reference code is ambiguous
the docstring says which reading dfkd implements."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Hinton et al. 2015: KL(softmax(t/tau) || softmax(s/tau)) * tau^2, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits / tau, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * tau * tau


def kd_l1(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """DFAD (Fang et al. 2019), eq. 5: mean absolute error between logits (tau unused)."""
    return (student_logits - teacher_logits).abs().mean()


def kd_kl_elementwise(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """ZSKT's KL: `F.kl_div` with its default 'mean' reduction, i.e. averaged over batch *and* classes
    (= kd_kl / num_classes); ZSKT's attention weight beta=250 was tuned against this scale."""
    return kd_kl(student_logits, teacher_logits, tau) / student_logits.shape[1]


def kd_hard_label(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Cross-entropy with the teacher's top-1 class (tau unused): what a label-only teacher gives to learn from
    (IDEAL, Zhang et al. 2023, the student's loss)."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(1))


KD_LOSSES = {"kl": kd_kl, "l1": kd_l1, "kl_elementwise": kd_kl_elementwise, "ce": kd_hard_label}


def decision_adversarial_loss(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """-mean_i 1[argmax S_i = argmax T_i] * KL(softmax T_i || softmax S_i)  (FastDFKD, CMI, NAYER;
    tau = 1): the generator seeks images the student still classifies as the teacher does, but with a different
    distribution."""
    log_s, log_t = F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    agree = (s_logits.argmax(1) == t_logits.argmax(1)).float()
    return -(agree * kl).mean()


def information_entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """DAFL (Chen et al. 2019) eq. 4: sum_c pbar_c * log10(pbar_c), pbar = batch-mean softmax. Minimizing it
    (towards -1 for 10 classes) makes the batch cover the classes evenly. DFQ's `class_balance_loss` in log10."""
    p = F.softmax(logits, dim=1).mean(0)
    return (p * torch.log10(p.clamp_min(1e-12))).sum()


def class_balance_loss(logits: torch.Tensor) -> torch.Tensor:
    """DFQ's class-balance term (Choi et al. 2020, as Fast-Datafree's `class_balance_loss` and its `--balance 20`):
    sum_c pbar_c * ln(pbar_c), pbar = batch-mean softmax; towards -ln(10) = -2.30 for 10 classes. DAFL's eq. 4
    (`information_entropy_loss`) is the same sum in log10, 2.3x smaller: its published weights are for that."""
    p = F.softmax(logits, dim=1).mean(0)
    return (p * torch.log(p.clamp_min(1e-12))).sum()


def mean_negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """IDEAL's (Zhang et al. 2023) information term: mean over images i and classes c of p_ic * ln p_ic, the
    negative prediction entropy of each image divided by the number of classes. Minimizing it spreads each image's
    prediction (towards -ln(C)/C, a uniform one)."""
    p = F.softmax(logits, dim=1)
    return (p * F.log_softmax(logits, dim=1)).mean()


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017: L2-normalized, flattened spatial map of the channel mean of squared activations."""
    return F.normalize(features.pow(2).mean(1).flatten(1), dim=1)


def feature_regression(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """FitNets' hint loss (Romero et al., ICLR 2015, eq. 3) with identity regressor: mean squared difference of two
    feature maps of the same shape."""
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"distill.attention.kind=features pairs feature maps of equal shape, got student "
                         f"{tuple(student_features.shape[1:])} and teacher {tuple(teacher_features.shape[1:])}: pair "
                         f"modules whose outputs match, or use kind=at (attention maps only need equal spatial size)")
    return (student_features - teacher_features).pow(2).mean()


def attention_transfer(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """ZSKT eq. 3 for one block pair: mean squared difference of the attention maps."""
    return (attention_map(student_features) - attention_map(teacher_features)).pow(2).mean()


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, tau: float = 3.0,
                  clamp: tuple[float, float] | None = (0.01, 0.99)) -> torch.Tensor:
    """Jensen-Shannon divergence between softmax(a/tau) and softmax(b/tau), batch mean, natural log:
    0.5*KL(P||M) + 0.5*KL(Q||M), M = (P+Q)/2. DeepInversion's ADI term (Yin et al. 2020, eq. 8) uses tau=3
    and clamps the probabilities to [0.01, 0.99] for stability, as here."""
    p = F.softmax(logits_a / tau, dim=1)
    q = F.softmax(logits_b / tau, dim=1)
    m = 0.5 * (p + q)
    if clamp is not None:
        p, q, m = p.clamp(*clamp), q.clamp(*clamp), m.clamp(*clamp)
    kl_pm = (p * (p.log() - m.log())).sum(1)
    kl_qm = (q * (q.log() - m.log())).sum(1)
    return (0.5 * kl_pm + 0.5 * kl_qm).mean()


def bn_stat_loss(mean: torch.Tensor, var: torch.Tensor, running_mean: torch.Tensor,
                 running_var: torch.Tensor) -> torch.Tensor:
    """DeepInversion eq. 4 for one BN layer: ||mu(x) - mu_run||_2 + ||sigma^2(x) - sigma^2_run||_2
    (L2 norms, not squared)."""
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


def _tv_diffs(x: torch.Tensor):
    """The four neighbour differences of DeepInversion's image prior: right, down, and both diagonals."""
    return (x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
            x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:])


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion R_TV (L2 variant): sum over the four directions of the Frobenius norm of the differences."""
    return sum(torch.linalg.vector_norm(d) for d in _tv_diffs(x))


def tv_l1(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion R_TV (L1 variant): sum over the four directions of the mean absolute difference."""
    return sum(d.abs().mean() for d in _tv_diffs(x))


def image_l2(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion R_l2: per-image L2 norm, averaged over the batch."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


def instance_contrastive_loss(anchors: torch.Tensor, keys: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """InfoNCE (Oord et al. 2018) as CMI's instance discrimination (Fang et al., IJCAI 2021): anchor i's positive
    is key i (another view of the same synthetic image); every other key, of the batch or of a memory of earlier
    images appended after the batch's rows, is a negative. Rows are L2-normalized here; `keys` may have more rows
    than `anchors`:
        mean_i -log( exp(a_i . k_i / tau) / sum_j exp(a_i . k_j / tau) )."""
    a, k = F.normalize(anchors, dim=1), F.normalize(keys, dim=1)
    logits = a @ k.t() / tau
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))
