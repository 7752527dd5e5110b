"""Mutation check of the objectives: does the default suite notice a wrong sign or weight? Not part of the suite
(it runs the suite's objective tests once per mutant, about ten seconds each):

    python -m tests.mutants [--only NAME ...] [--kinds KIND ...] [--tests FILE ...] [--report docs/notes/mutants.md]

The mutants are found by walking the syntax tree of dfkd/losses.py and dfkd/synthesizers/*.py (terms.py, the
checker's own measures, excluded), so no loss term is left out by hand:

- sign:    `return e` -> `return -(e)` in every public function of losses.py and every module-level function of a
           synthesizer file; every entry of a `terms` dict (`terms = {...}`, `terms[...] = e`) negated, except
           the logged ones (`acc`, `disagreement`, `logits`: never weighted); `self.w[k] * v` in `weighted_total`
           negated;
- weight:  every entry of a `self.w = {...}` dict set to 0 and negated;
- swap:    teacher and student (the first two arguments) exchanged in every call of a discrepancy (of a symmetric
           one, L1 or Jensen-Shannon, the swap is an equivalent mutant: kind `swap-symmetric`, expected to survive);
- detach:  `.detach()` removed from every call in a synthesizer, and added to every assignment of images
           (`x`, `x01`, `xa` = ...) on the generator's path.

Each mutant is applied to the file in place (restored afterwards, also on Ctrl-C) and judged by the tests that
cover it: tests/test_losses.py and tests/test_objectives.py, for a synthesizer file the plug-in contract
(tests/test_synthesizer_contract.py), and the file's own tests/test_<stem>.py.
A surviving mutant is listed with its line; equivalent mutants (e.g. swapping the arguments of the symmetric
Jensen-Shannon divergence) survive by nature, and the report says which kind each survivor is. `--survivors FILE`
reruns only the mutants a previous report lists as surviving.
"""
from __future__ import annotations

import argparse
import ast
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [ROOT / "dfkd" / "losses.py"] + sorted(p for p in (ROOT / "dfkd" / "synthesizers").glob("*.py")
                                                 if p.name not in ("terms.py", "__init__.py"))
DISCREPANCIES = {"kd_kl", "kd_l1", "kd_kl_elementwise", "js_divergence", "decision_adversarial_loss", "per_image_l1",
                 "attention_transfer", "feature_regression"}
SYMMETRIC = {"kd_l1", "js_divergence", "per_image_l1"}  # swapping their arguments changes nothing: equivalent
IMAGE_NAMES = {"x", "x01", "xa"}
LOGGED = {"acc", "disagreement", "logits"}  # entries of a terms dict that are logged or reused, never weighted


@dataclass
class Mutant:
    path: Path
    kind: str
    line: int
    start: int   # character offsets in the file
    end: int
    replacement: str
    original: str

    def describe(self) -> str:
        old = " ".join(self.original.split())
        return f"{self.path.relative_to(ROOT)}:{self.line} [{self.kind}] {old[:70]}"


def _offsets(source: str) -> list[int]:
    starts, pos = [], 0
    for line in source.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    return starts


def find_mutants(path: Path) -> list[Mutant]:
    source = path.read_text()
    tree = ast.parse(source)
    lines = _offsets(source)
    out: list[Mutant] = []

    def span(node):
        return lines[node.lineno - 1] + node.col_offset, lines[node.end_lineno - 1] + node.end_col_offset

    def add(kind, node, replace):
        a, b = span(node)
        text = source[a:b]
        out.append(Mutant(path, kind, node.lineno, a, b, replace(text), text))

    negate = lambda t: f"-({t})"  # noqa: E731
    is_losses = path.name == "losses.py"
    for fn in tree.body:  # module-level functions: their return values
        if isinstance(fn, ast.FunctionDef) and not (is_losses and fn.name.startswith("_")):
            for node in ast.walk(fn):
                if isinstance(node, ast.Return) and node.value is not None and not isinstance(node.value, ast.Tuple):
                    add("sign", node.value, negate)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id == "terms" and isinstance(node.value, ast.Dict):
                for k, v in zip(node.value.keys, node.value.values):
                    if not (isinstance(k, ast.Constant) and k.value in LOGGED):
                        add("sign", v, negate)
            elif (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                  and target.value.id == "terms"):
                key = target.slice
                if not (isinstance(key, ast.Constant) and key.value in LOGGED):
                    add("sign", node.value, negate)
            elif (isinstance(target, ast.Attribute) and target.attr == "w" and isinstance(target.value, ast.Name)
                  and target.value.id == "self" and isinstance(node.value, ast.Dict)):
                for v in node.value.values:
                    add("weight-zero", v, lambda t: "0.0")
                    add("weight-sign", v, negate)
            elif isinstance(target, ast.Name) and target.id in IMAGE_NAMES and not is_losses:
                add("detach-add", node.value, lambda t: f"({t}).detach()")
        if isinstance(node, ast.FunctionDef) and node.name == "weighted_total":
            for sub in ast.walk(node):
                if isinstance(sub, ast.BinOp) and isinstance(sub.op, ast.Mult):
                    add("sign", sub, negate)
        if isinstance(node, ast.Call) and not is_losses:
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in DISCREPANCIES and len(node.args) >= 2:
                a0, a1 = node.args[0], node.args[1]
                s0, e0 = span(a0)
                s1, e1 = span(a1)
                first, second = source[s0:e0], source[s1:e1]
                s, e = span(node)
                call = source[s:e]
                swapped = call[: s0 - s] + second + call[e0 - s: s1 - s] + first + call[e1 - s:]
                kind = "swap-symmetric" if name in SYMMETRIC else "swap"
                out.append(Mutant(path, kind, node.lineno, s, e, swapped, call))
            if name == "detach" and isinstance(node.func, ast.Attribute) and not node.args:
                add("detach-remove", node, lambda t, inner=ast.get_source_segment(source, node.func.value): inner)
    return sorted(out, key=lambda m: (m.start, m.kind))


def tests_for(path: Path) -> list[str]:
    """The tests that judge a mutant of `path`, those most likely to fail first (the run stops at the first)."""
    own = ROOT / "tests" / f"test_{path.stem}.py"
    tests = ["tests/test_losses.py", "tests/test_objectives.py"]
    if path.name != "losses.py":
        tests.reverse()
        tests.append("tests/test_synthesizer_contract.py")  # no graph kept in state, none returned with the images
    return tests + ([str(own.relative_to(ROOT))] if own.exists() else [])


def killed(m: Mutant, tests: list[str] | None = None, timeout: int = 600) -> tuple[bool, str]:
    source = m.path.read_text()
    mutated = source[: m.start] + m.replacement + source[m.end:]
    try:
        compile(mutated, str(m.path), "exec")
    except SyntaxError as e:
        return True, f"does not compile ({e.msg})"
    m.path.write_text(mutated)
    try:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
               "--no-header", "-o", "addopts=", *(tests or tests_for(m.path))]
        if m.path.parent.name == "synthesizers" and m.path.stem not in ("base", "generative", "momentum_bn"):
            cmd += ["-k", m.path.stem if tests else f"not test_objectives or {m.path.stem}"]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        first = next((ln for ln in out.stdout.splitlines() if ln.startswith("FAILED")), "")
        return out.returncode != 0, first.removeprefix("FAILED ")[:110]
    except subprocess.TimeoutExpired:
        return True, "timed out"
    finally:
        m.path.write_text(source)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # so the mutated file is restored (the `finally` in `killed`) on SIGTERM too


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="file stems to mutate (e.g. dafl losses)")
    ap.add_argument("--kinds", nargs="*", help="mutation kinds (sign weight-zero weight-sign swap detach-add "
                                              "detach-remove)")
    ap.add_argument("--tests", nargs="*", help="judge by these test files alone (a method's mutants by its own "
                                              "cases in them), e.g. to see what tests/test_learning.py catches")
    ap.add_argument("--list", action="store_true", help="list the mutants and stop")
    ap.add_argument("--survivors", type=Path, help="rerun only the mutants this earlier report lists as surviving")
    ap.add_argument("--report", type=Path, help="write the table of results to this Markdown file")
    a = ap.parse_args(argv)
    mutants = [m for p in TARGETS if not a.only or p.stem in a.only for m in find_mutants(p)
               if not a.kinds or m.kind in a.kinds]
    if a.survivors:
        listed = {ln.split("`")[1] for ln in a.survivors.read_text().splitlines() if ln.startswith("- survived: `")}
        mutants = [m for m in mutants if m.describe() in listed]
    if a.list:
        print("\n".join(m.describe() for m in mutants))
        return 0
    rows, t0 = [], time.time()
    for i, m in enumerate(mutants, 1):
        dead, why = killed(m, a.tests)
        rows.append((m, dead, why))
        print(f"[{i}/{len(mutants)}] {'killed  ' if dead else 'SURVIVED'} {m.describe()}  {why}", flush=True)
    survivors = [(m, why) for m, dead, why in rows if not dead]
    summary = {}
    for m, dead, _ in rows:
        k, s = summary.get(m.kind, (0, 0))
        summary[m.kind] = (k + dead, s + (not dead))
    lines = ["| kind | killed | survived |", "|---|---:|---:|"]
    lines += [f"| {k} | {d} | {s} |" for k, (d, s) in summary.items()]
    lines += ["", f"{len(rows)} mutants, {len(survivors)} survived, {time.time() - t0:.0f} s.", ""]
    lines += [f"- survived: `{m.describe()}`" for m, _ in survivors]
    text = "\n".join(lines)
    print(text)
    if a.report:
        a.report.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
