"""Black-box teachers: a model seen only through its answers (`teacher.access=scores|label`), behind the teacher
interface it shares with `dfkd.teachers.white_box.WhiteBoxTeacher` (`logits`, `probabilities`, `module` = None,
`params` = None, and the query accounting that is a no-op for a white box).

The wrapper is not a `torch.nn.Module` and holds no reference to one as an attribute: it has no parameters,
modules, buffers, hooks or BatchNorm statistics to reach, and its answers are computed without autograd and
returned detached, so no gradient can flow through it (by construction: the answering function is closed over,
never exposed). Every image sent is counted; `max_queries` caps the images a run may send for distillation.

What it returns, whatever the teacher behind it (a local model, a URL, a Python callable):
- `scores`: class probabilities [N, K] (with `top_k`, only the k largest, the rest 0, as an API that lists its top
  classes returns them);
- `label`: the predicted class only, as one-hot rows [N, K].
`logits_from_answers` turns either into logits for the distillation losses (DFME's logit recovery).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from dfkd.errors import DfkdError

ACCESS_LEVELS = ("label", "scores", "white")  # from least to most of the teacher a method may see


def access_rank(access: str) -> int:
    if access not in ACCESS_LEVELS:
        raise DfkdError(f"teacher.access must be one of {', '.join(ACCESS_LEVELS)}, got {access!r}")
    return ACCESS_LEVELS.index(access)


class QueryBudgetSpent(DfkdError):
    """The next query would send more images than `teacher.max_queries` allows; the run stops cleanly."""


class TeacherServiceError(DfkdError):
    """A remote teacher refused a request or gave an answer dfkd cannot read."""


class BlackBoxTeacher:
    """A teacher answering images with probabilities or labels only; counts the images it is sent.

    `answer` maps a float [N, C, H, W] batch of [0,1] images to probabilities [N, K] or labels [N]. Queries are
    counted per purpose ("distill", the default, and e.g. "teacher_check"); `max_queries` limits "distill"."""

    __slots__ = ("_answer", "access", "num_classes", "top_k", "max_queries", "counts", "_purpose", "_split")
    training = False  # read by the synthesizers' eval-mode assertion; there is no train mode to switch to
    module = None     # nothing to hook into: no BatchNorm statistics, feature maps or gradients
    params = None     # nothing of it is visible

    def __init__(self, answer: Callable[[torch.Tensor], torch.Tensor], access: str, num_classes: int,
                 top_k: int | None = None, max_queries: int | None = None):
        if access not in ("scores", "label"):
            raise DfkdError(f"a black-box teacher answers with scores or labels, not {access!r}")
        if top_k is not None and not 1 <= int(top_k) <= int(num_classes):
            raise DfkdError(f"teacher.top_k must be between 1 and the number of classes ({num_classes}), got {top_k}")
        if max_queries is not None and int(max_queries) < 1:
            raise DfkdError(f"teacher.max_queries must be a positive number of images, got {max_queries}")
        self._answer = answer
        self.access, self.num_classes = access, int(num_classes)
        self.top_k = None if top_k is None else int(top_k)
        self.max_queries = None if max_queries is None else int(max_queries)
        self.counts = {"distill": 0}
        self._purpose = "distill"
        self._split = False

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits recovered from the answers (DFME Sec. 3.3); one query per image, no gradient."""
        return logits_from_answers(self(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The answers themselves: probabilities, or one-hot rows for `label` access; one query per image."""
        return self(x)

    def split_budget(self, world_size: int) -> None:
        """Each of `world_size` ranks spends its share of `max_queries` (once per process)."""
        if self.max_queries is not None and not self._split:
            self.max_queries //= int(world_size)
        self._split = True

    @property
    def queries(self) -> int:
        """Images sent for distillation (the count `max_queries` limits)."""
        return self.counts["distill"]

    @queries.setter
    def queries(self, n: int) -> None:  # restored from a checkpoint on resume
        self.counts["distill"] = int(n)

    def remaining(self) -> int | None:
        return None if self.max_queries is None else max(self.max_queries - self.queries, 0)

    @contextlib.contextmanager
    def counting_as(self, purpose: str):
        """Count the queries sent inside the block under `purpose` (not against the distillation budget)."""
        before, self._purpose = self._purpose, purpose
        self.counts.setdefault(purpose, 0)
        try:
            yield self
        finally:
            self._purpose = before

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        if self._purpose == "distill" and self.max_queries is not None and self.queries + n > self.max_queries:
            raise QueryBudgetSpent(f"the query budget is spent: {self.queries:,} of teacher.max_queries="
                                   f"{self.max_queries:,} images sent, and the next query has {n}")
        with torch.no_grad():
            out = self._answer(x.detach().float())
        self.counts[self._purpose] += n
        return self._restrict(torch.as_tensor(out).detach(), n).to(x.device)

    def _restrict(self, out: torch.Tensor, n: int) -> torch.Tensor:
        """Whatever the service returned, only what the declared access grants."""
        k = self.num_classes
        if out.dim() == 1 and not out.is_floating_point():  # labels
            if self.access == "scores":
                raise TeacherServiceError("teacher.access=scores but the teacher answered with labels only: use "
                                          "teacher.access=label (and a label-only synthesizer, e.g. ideal)")
            labels = out.long()
        elif out.dim() == 2 and out.shape[1] == k:
            probs = out.float()
            if self.access == "label":
                labels = probs.argmax(1)
            elif self.top_k is not None:
                top = probs.topk(self.top_k, dim=1)
                return torch.zeros_like(probs).scatter_(1, top.indices, top.values)
            else:
                return probs
        else:
            raise TeacherServiceError(f"the teacher answered {n} images with a tensor of shape {tuple(out.shape)}; "
                                      f"expected probabilities [{n}, {k}] or integer labels [{n}]")
        if labels.shape[0] != n or labels.min() < 0 or labels.max() >= k:
            raise TeacherServiceError(f"the teacher's labels do not fit {n} images of {k} classes")
        return F.one_hot(labels, k).float()

    def __repr__(self) -> str:
        budget = f", max_queries={self.max_queries:,}" if self.max_queries is not None else ""
        return f"BlackBoxTeacher(access={self.access}, top_k={self.top_k}{budget}, queries={self.queries:,})"


def local_answers(classifier: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A local model served as a black box: [0,1] images -> softmax probabilities. The model is held only by this
    closure (moved to the images' device on first use)."""
    classifier.eval().requires_grad_(False)

    def answer(x: torch.Tensor) -> torch.Tensor:
        if next(classifier.parameters()).device != x.device:
            classifier.to(x.device)
        return F.softmax(classifier(x), dim=1)

    return answer


def logits_from_answers(answers: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DFME (Truong et al. 2021) Sec. 3.3, logit recovery: l_i = log p_i - (1/K) sum_j log p_j. Probabilities
    pinned at 0 (top-k, labels) are taken as eps, so a one-hot row gives its class a margin of log(1/eps)."""
    log_p = answers.clamp_min(eps).log()
    return log_p - log_p.mean(dim=1, keepdim=True)
