"""The distillation loop every synthesizer feeds: `DistillModule` and its parts (KD batches and replay, feature
transfer, weight averaging, per-rank state, guards)."""
