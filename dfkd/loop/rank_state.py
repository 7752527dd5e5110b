"""Per-rank state in checkpoints. What each process holds alone (its sample bank, RNG streams, synthesizer
counters) is gathered from every rank into the checkpoint, and handed back to the same rank on resume."""
from __future__ import annotations

import torch
import torch.nn as nn
from pytorch_lightning.utilities import move_data_to_device


def gather_rank_states(state: dict, world_size: int) -> list[dict]:
    """Every rank's `state`, in rank order (one entry outside DDP). Collective: every rank must call it."""
    mine = move_data_to_device(state, "cpu")
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, mine)
        return gathered
    return [mine]


def own_rank_state(per_rank: list[dict], rank: int, world_size: int) -> dict:
    """This rank's entry of a checkpoint written by `gather_rank_states`; the process count must match."""
    if len(per_rank) != world_size:
        raise RuntimeError(f"checkpoint was written by {len(per_rank)} processes but this run has {world_size}; "
                           f"resume with trainer.devices={len(per_rank)}")
    return per_rank[rank]


def fingerprint(module: nn.Module) -> torch.Tensor:
    """Per-parameter sums: under DDP every rank must hold the same student and generators (tested)."""
    params = [p.detach().double().sum() for p in module.parameters()]
    return torch.stack(params) if params else torch.zeros(0, dtype=torch.float64)


def rank_bundle(module) -> dict:
    """What this rank of a DistillModule holds alone, as plain tensors and values: its KD-batch source (bank,
    replay memory, RNG), the global torch RNG, the teacher's query count, the synthesizer's extra state and the
    counters, with fingerprints of the student and synthesizer (the same on every rank under DDP)."""
    return {**module.batches.state_dict(), "torch_rng": torch.get_rng_state(), "queries": module.teacher.queries,
            "synth": module.synthesizer.extra_state(), "images_synthesized": module.images_synthesized,
            "synth_seconds": module.synth_seconds,
            "student_fingerprint": fingerprint(module.student), "synth_fingerprint": fingerprint(module.synthesizer)}


def restore_rank_bundle(module, mine: dict) -> None:
    """Hand `rank_bundle`'s entry back to the same rank on resume."""
    module.batches.load_state_dict(mine, device=module.device)
    torch.set_rng_state(mine["torch_rng"])
    module.synthesizer.load_extra_state(mine["synth"])
    module.images_synthesized = int(mine["images_synthesized"])
    module.synth_seconds = float(mine["synth_seconds"])
    if mine.get("queries") is not None and module.teacher.queries is not None:  # a teacher that counts queries
        module.teacher.queries = int(mine["queries"])
