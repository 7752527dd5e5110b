"""The house rules of docs/architecture.md, checked on the source: the package's top level stays small, each
module imports only from its own layer or below (function-level imports included), the loop class stays the loop,
and white box versus black box is asked nowhere outside the teacher package."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dfkd"

# bottom to top; a module may import from its own layer and the layers below
LAYERS = [
    ("dfkd.errors", "dfkd.registry", "dfkd.resources"),
    ("dfkd.losses", "dfkd.optim", "dfkd.augment"),
    ("dfkd.hooks",),
    ("dfkd.models",),
    ("dfkd.data",),
    ("dfkd.teachers",),
    ("dfkd.synthesizers",),
    ("dfkd.loop",),
    ("dfkd.runs",),
    ("dfkd.bench",),
]


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: place it in one")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if name != "dfkd":  # the package face re-exports from the top (dfkd.load_student)
            yield name, path


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dfkd"):
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dfkd"):
                    yield alias.name, node.lineno


def test_no_module_imports_from_a_layer_above_its_own():
    bad = []
    for name, path in modules():
        for target, line in imports(path):
            if target != "dfkd" and layer_of(target) > layer_of(name):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({name}) imports {target}")
    assert not bad, "imports from a layer above:\n" + "\n".join(bad)


def test_the_top_level_holds_at_most_twelve_modules():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 12, top


def test_distill_module_is_only_the_loop():
    tree = ast.parse((PACKAGE / "loop" / "module.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DistillModule")
    assert cls.end_lineno - cls.lineno + 1 <= 230


def test_white_or_black_box_is_asked_only_inside_the_teacher_package():
    bad = []
    for name, path in modules():
        if name.startswith("dfkd.teachers"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and \
                    "BlackBoxTeacher" in ast.unparse(node.args[1]):
                bad.append(f"{name}:{node.lineno}")
            if isinstance(node, (ast.Name, ast.Attribute)) and \
                    (getattr(node, "attr", None) or getattr(node, "id", None)) in ("black_box", "is_black_box"):
                bad.append(f"{name}:{node.lineno}")
    assert not bad, bad


def test_reading_benchmark_results_needs_no_training_code():
    import subprocess
    import sys

    code = ("import sys, dfkd.bench.suite, dfkd.runs.curve, dfkd.runs.rundir; "
            "print(sorted(m for m in sys.modules if m.startswith(('dfkd.loop', 'pytorch_lightning'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
