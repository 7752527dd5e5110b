"""Where each KD step's images come from (`KDBatchSource`), one object for the distillation loop:

- a synthesizer whose `sample(n)` gives fresh images (DFAD, KegNet) is drawn from at every student step;
- otherwise, with the sample bank on (`bank.enabled`), a random batch of the bank, to which every synthesized
  batch is added (DeepInversion, FastDFKD, DAFL here);
- otherwise the latest synthesized batch (ZSKT: `kd_steps` student steps on one pseudo-batch).

`distill.replay` (capacity > 0) adds a replay memory: the last `capacity` teacher-scored images with the teacher's
logits, replayed as a `fraction` of every KD batch, which keeps its size; `balanced` draws the teacher's classes
(argmax of the stored logits) equally often, however unevenly the synthesizer covers them. Adversarial generators
move on to new images every step and the student forgets the old ones; replaying them counters that (Binici et al.,
"Preventing catastrophic forgetting and distribution mismatch in knowledge distillation via synthetic data",
WACV 2022). It is not part of any method's paper.

What the teacher is asked about, and so what the replay memory remembers, is `KDBatch.asked`. The source's RNG
(seeded from the run's seed and the rank) draws bank samples and replay picks. The bank, the memory and the RNG
are checkpointed, so a resumed run trains on the same images as an uninterrupted one."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dfkd.loop.bank import SampleBank
from dfkd.synthesizers.base import SynthBatch, Synthesizer


@dataclass
class KDBatch:
    """One KD step's images. `asked`: what the teacher is asked about: every drawn row where asking is free (a
    white box: one forward, reused over a pseudo-batch's steps, remembered whole), only the rows the student trains
    on where each image is a paid query (a black box). `fresh_rows`: which rows of `asked` the student trains on
    (None: all), the first rows of its batch and the rows feature transfer pairs; `replayed`: remembered images that
    follow them, with the teacher's logits stored for them (no feature maps, no new query)."""
    asked: torch.Tensor
    fresh_rows: torch.Tensor | None = None
    replayed: torch.Tensor | None = None
    replayed_logits: torch.Tensor | None = None

    @property
    def fresh(self) -> torch.Tensor:
        return self.asked if self.fresh_rows is None else self.asked[self.fresh_rows]

    @property
    def student_input(self) -> torch.Tensor:
        return self.fresh if self.replayed is None else torch.cat([self.fresh, self.replayed])

    def targets(self, asked_logits: torch.Tensor) -> torch.Tensor:
        """The teacher logits of `student_input`, given the teacher's logits for `asked`."""
        fresh = asked_logits if self.fresh_rows is None else asked_logits[self.fresh_rows]
        return fresh if self.replayed is None else torch.cat([fresh, self.replayed_logits])


class KDBatchSource:
    def __init__(self, batch_size: int, bank: dict, replay: dict):
        self.batch_size = int(batch_size)
        self.use_bank = bool(bank["enabled"])
        self.bank = SampleBank(bank["capacity"], bank["dtype"])
        self.replay = SampleBank(int(replay["capacity"]), "float32") if replay["capacity"] else None
        self.replay_fraction = float(replay["fraction"])
        self.replay_balanced = bool(replay.get("balanced", False))
        if self.replay is not None and not 0.0 < self.replay_fraction <= 1.0:
            raise ValueError(f"distill.replay.fraction must be in (0, 1], got {self.replay_fraction} (1: the student "
                             f"trains on remembered teacher answers only, once the memory holds any)")
        self.latest: SynthBatch | None = None
        self.rng: torch.Generator | None = None
        self.ask_every_row = True

    def start(self, device: torch.device, seed: int, rank: int, ask_every_row: bool = True) -> None:
        """`ask_every_row`: the teacher is free to ask (a white box), so it sees every drawn row; else (each image a
        paid query) only the rows the student trains on."""
        self.ask_every_row = bool(ask_every_row)
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(int(seed) * 1000 + 7 + rank)

    @property
    def needs_synthesis(self) -> bool:
        """True when there is nothing to train on yet (no bank and no batch synthesized)."""
        return not self.use_bank and self.latest is None

    def add(self, batch: SynthBatch) -> None:
        if self.use_bank:
            self.bank.add(batch.images, batch.targets)
        self.latest = batch

    def next(self, synthesizer: Synthesizer, augment) -> KDBatch:
        """The one call of a KD step: draw, augment, and (with replay) keep `batch_size - n_replay` random rows
        beside `n_replay` remembered ones. The KD batch is `batch_size` images whatever the drawn batch holds (a
        synthesized batch may be larger), so `fraction=1` keeps no fresh row: a black box is never asked about an
        image twice."""
        x = augment(self._draw(synthesizer))
        n_replay = self._replay_count()
        if not n_replay:
            return KDBatch(x)
        order = torch.randperm(x.shape[0], generator=self.rng, device=self.rng.device)
        keep = order[: max(0, self.batch_size - n_replay)].to(x.device)
        old_x, old_logits = self.replay.sample(n_replay, self.rng, balanced=self.replay_balanced)
        if self.ask_every_row:
            return KDBatch(x, keep, old_x, old_logits)
        return KDBatch(x[keep], None, old_x, old_logits)

    def _draw(self, synthesizer: Synthesizer) -> torch.Tensor:
        """The [0,1] images of one KD step, before augmentation."""
        fresh = synthesizer.sample(self.batch_size)
        if fresh is not None:
            return fresh
        if self.use_bank:
            return self.bank.sample(self.batch_size, self.rng)[0]
        return self.latest.images

    def remember(self, scored: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add this iteration's (images, teacher logits) to the replay memory."""
        if self.replay is not None:
            for images, logits in scored:
                self.replay.add(images, logits)

    def _replay_count(self) -> int:
        if self.replay is None or len(self.replay) == 0:
            return 0
        return int(round(self.batch_size * self.replay_fraction))

    def state_dict(self) -> dict:
        return {"bank": self.bank.state_dict(), "kd_rng": self.rng.get_state(),
                "replay": self.replay.state_dict() if self.replay is not None else None}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.bank.load_state_dict(state["bank"], device=device)
        if self.replay is not None and state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"], device=device)
        self.rng.set_state(state["kd_rng"])
