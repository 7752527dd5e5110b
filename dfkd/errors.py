"""One error type for everything a user can get wrong or fix: its message says what happened, the value given and
what to do. The command line prints it without a traceback and exits with status 2 (`--debug` or DFKD_DEBUG=1
shows the traceback); anything else is a crash (a traceback, status 1)."""
from __future__ import annotations


class DfkdError(Exception):
    """A user-facing error; str(e) is the whole message."""


class CheckpointError(DfkdError, ValueError):
    """A checkpoint or model file that cannot be read, or that does not fit what it is loaded into.
    `pickled_objects`: the file is whole but holds Python objects that the safe loader refuses."""

    def __init__(self, message: str, pickled_objects: bool = False):
        super().__init__(message)
        self.pickled_objects = pickled_objects


class RunError(DfkdError, RuntimeError):
    """The run cannot start as asked; the message says what to do instead."""


class DivergenceError(DfkdError, FloatingPointError):
    """A loss, the synthetic images or the weights became NaN/inf, or the student stayed at chance; the run stops,
    and no checkpoint is written from the diverged state."""


# how the chance guard's error begins; the benchmark reads it in a run's log (dfkd.bench.suite.failure_status)
STILL_AT_CHANCE = "the student is still at chance"
