"""Where the recipes and the shipped teachers are: inside the installed package (`pip install .` puts the
repository's `recipes/` and `checkpoints/teachers/` there as dfkd/recipes and dfkd/assets/teachers), or, in a source
checkout or an editable install, at the top of the repository."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _package_or_repo(name: str, repo_path: str) -> Path:
    packaged = files("dfkd").joinpath(*name.split("/"))
    if packaged.is_dir():
        return Path(str(packaged))
    return REPO_ROOT / repo_path


RECIPES_DIR = _package_or_repo("recipes", "recipes")
TEACHERS_DIR = _package_or_repo("assets/teachers", "checkpoints/teachers")
