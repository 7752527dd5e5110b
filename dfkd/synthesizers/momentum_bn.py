"""What FastDFKD and NAYER share: BN-statistics matching against a momentum blend of batch statistics
(`dfkd.hooks.BNStatHooks(momentum=...)`), a count of synthesize() calls, and both kept in the checkpoint so a
resumed run continues the same blend and schedule."""
from __future__ import annotations

from dfkd.hooks import BNStatHooks


class MomentumBNStatistics:
    """Mixin for a `Synthesizer` with `first_bn_multiplier`, `bn_momentum` and `calls` attributes."""

    bn_hooks: BNStatHooks | None = None

    def attach(self, teacher, student, ctx):
        super().attach(teacher, student, ctx)
        self.bn_hooks = self.hooks(BNStatHooks(teacher, self.first_bn_multiplier, momentum=self.bn_momentum))

    def extra_state(self) -> dict:
        state = super().extra_state()
        state["calls"] = self.calls
        state["bn_ema"] = [list(p) for p in self.bn_hooks.ema] if self.bn_hooks and self.bn_hooks.ema else None
        return state

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.calls = int(state.get("calls", 0))
        if state.get("bn_ema") is not None:
            self.bn_hooks.ema = [(m.to(self.ctx.device), v.to(self.ctx.device)) for m, v in state["bn_ema"]]
