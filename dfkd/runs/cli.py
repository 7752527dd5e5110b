"""dfkd's command line (`python train.py ...`, `dfkd-train ...` and `python -m dfkd.runs.cli ...` are the same command).

    python train.py recipe=deepinversion_resnet [key=value ...] [group=option ...]
    python train.py recipe=deepinversion_resnet run=my_run resume=true
    python train.py --help | recipe=list

A mistake (a wrong value, an unreadable checkpoint, a resume that does not match its run ...) prints one message
that says what to do, and exits with status 2; `--debug` (or DFKD_DEBUG=1) shows the traceback too.
"""
from __future__ import annotations

import os
import sys


def _usage() -> str:
    from dfkd.runs.config import list_recipes, recipe_description

    lines = [__doc__.strip(), "", "recipes:"]
    lines += [f"  {r:<34} {recipe_description(r)}" for r in list_recipes()]
    lines += ["", "common overrides: run=NAME resume=true overwrite=true seed=N trainer.devices=N "
              "synthesizer.iterations=N distill.epochs=N student=<option> data=<option>"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    debug = "--debug" in argv or os.environ.get("DFKD_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    recipes = [a.split("=", 1)[1] for a in argv if a.startswith("recipe=")]
    overrides = [a for a in argv if not a.startswith("recipe=")]
    if any(a in ("-h", "--help") for a in argv) or recipes == ["list"]:
        print(_usage())
        return 0
    if len(recipes) != 1:
        print("error: say which recipe to run, once: python train.py recipe=NAME\n\n" + _usage(), file=sys.stderr)
        return 2
    from dfkd.runs.config import compose
    from dfkd.errors import DfkdError
    from dfkd.runs.run import main as run_main

    try:
        run_main(compose(recipes[0], overrides))
    except DfkdError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def console() -> None:
    """The `dfkd-train` console script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
