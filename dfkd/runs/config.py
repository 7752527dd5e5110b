"""Recipes: Hydra's Compose API over the `recipes/` tree (not `@hydra.main`, which fights Lightning's DDP
re-launch).

- `recipes/base.yaml` is the primary config: it declares every option dfkd reads, with its default.
- Every other top-level `recipes/*.yaml` is a recipe: a delta over `base` (Hydra's experiment pattern) that picks
  config-group options (`override /teacher: lenet5_mnist`) and sets what differs from the defaults.
- Sub-folders are config groups, one concern each: data, teacher, student, synthesizer, trainer.
- `DFKD_RECIPE_PATH` (folders separated by ':') adds folders of your own recipes (and groups) to the search.

    cfg = compose("deepinversion_resnet", ["synthesizer.iterations=50", "student=resnet8_half"])

Struct mode is on: an override of a key that does not exist is an error naming the nearest valid keys.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from dfkd.errors import DfkdError
from dfkd.resources import RECIPES_DIR, REPO_ROOT, TEACHERS_DIR

ROOT = REPO_ROOT
PRIMARY = "base"
OPEN_KEYS = ("teacher.arch_kwargs.", "student.arch_kwargs.")

OmegaConf.register_new_resolver("dfkd_teachers", lambda: str(TEACHERS_DIR), replace=True)


def recipe_dirs() -> list[Path]:
    """The shipped recipes first, then the folders of `DFKD_RECIPE_PATH`."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get("DFKD_RECIPE_PATH", "").split(os.pathsep) if p]
    return [RECIPES_DIR, *extra]


def recipe_file(name: str) -> Path:
    for d in reversed(recipe_dirs()):
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    raise FileNotFoundError(name)


class ConfigError(DfkdError, ValueError):
    """A recipe or override the user gave is not valid; the message says what would be."""


def list_recipes() -> list[str]:
    return sorted({p.stem for d in recipe_dirs() for p in d.glob("*.yaml")} - {PRIMARY})


def recipe_description(name: str) -> str:
    """First comment line of the recipe file."""
    for line in recipe_file(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _flat_keys(cfg, prefix="") -> list[str]:
    keys = []
    for k in cfg.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        v = cfg._get_node(k)  # the node, unresolved: a mandatory `???` value must not raise here
        if isinstance(v, DictConfig):
            keys += _flat_keys(v, full + ".")
    return keys


def _groups() -> list[str]:
    return sorted({p.name for d in recipe_dirs() for p in d.iterdir() if p.is_dir()})


def _reference(recipe: str, overrides: list[str]) -> DictConfig:
    """The recipe with only the overrides that swap config groups: what the other overrides are checked against."""
    groups = _groups()
    return _compose_raw(recipe, [o for o in overrides if o.split("=", 1)[0] in groups])


def _explain_override_error(recipe: str, overrides: list[str], err: Exception) -> str:
    msg = str(err).strip()
    try:
        base = _reference(recipe, overrides)
    except Exception:  # noqa: BLE001
        return msg
    known = _flat_keys(base)
    groups = _groups()
    hints = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if key.startswith(("+", "~")) or key in groups:
            continue
        if key not in known:
            near = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hints.append(f"  '{key}' is not a key of recipe '{recipe}'"
                         + (f"; did you mean: {', '.join(near)}" if near else ""))
    return msg + ("\n" + "\n".join(hints) if hints else "")


def _compose_raw(recipe: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    # Hydra looks for the primary config (the recipe) in the config dir only; the other recipe folders (base.yaml
    # and the config groups among them) go on its search path
    home = recipe_file(recipe).parent
    others = [f"file://{d}" for d in recipe_dirs() if d != home]
    search = [f"hydra.searchpath=[{','.join(others)}]"] if others else []
    with initialize_config_dir(config_dir=str(home), version_base="1.3"):
        return hydra_compose(config_name=recipe, overrides=[*search, *overrides])


def compose(recipe: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    recipes = list_recipes()
    if recipe not in recipes:
        near = difflib.get_close_matches(recipe, recipes, n=3)
        raise ConfigError(f"unknown recipe {recipe!r}." + (f" Did you mean {', '.join(near)}?" if near else "")
                          + f"\nRecipes: {', '.join(recipes)}")
    # a model's keyword arguments are an open set: `student.arch_kwargs.width=0.5` adds or sets, with no `+`
    overrides = [f"++{o}" if o.startswith(OPEN_KEYS) else o for o in overrides]
    try:
        cfg = _compose_raw(recipe, overrides)
    except Exception as e:  # hydra raises several exception types for bad overrides
        raise ConfigError(_explain_override_error(recipe, overrides, e)) from None
    with open_dict(cfg):
        cfg.recipe = recipe
        if not cfg.get("run"):
            cfg.run = recipe
        for part in ("teacher", "student"):  # another architecture: the recipe's arch_kwargs were for the old one
            swapped = any(o.startswith(f"{part}.arch=") for o in overrides)
            if swapped and not any(o.lstrip("+~").startswith(f"{part}.arch_kwargs") for o in overrides):
                cfg[part].arch_kwargs = {}
    OmegaConf.set_struct(cfg, True)
    check_value_types(recipe, overrides, cfg)
    validate(cfg)
    return cfg


# settings whose declared default is a number but which also take words (Lightning: devices="auto" or "0,1")
_FREE_TYPED = ("trainer.devices", "resume")


def check_value_types(recipe: str, overrides: list[str], cfg: DictConfig) -> None:
    """Each `key=value` override must have the type of the value the recipe declares for it (a number where a
    number is declared, true/false for a switch, a list for a list)."""
    groups = _groups()
    plain = [o for o in overrides if "=" in o and not o.startswith(("+", "~"))
             and o.split("=", 1)[0] not in groups and o.split("=", 1)[0] not in _FREE_TYPED]
    if not plain:
        return
    reference = _reference(recipe, overrides)
    for o in plain:
        key, given = o.split("=", 1)
        want = OmegaConf.select(reference, key, default=None)
        got = OmegaConf.select(cfg, key, default=None)
        problem = _type_problem(want, got)
        if problem:
            raise ConfigError(f"{key}={given}: {problem} (recipe '{recipe}' has {key}={_show(want)}). "
                              f"Give {key} a value of that kind.")


def _type_problem(want, got) -> str | None:
    if want is None or got is None:
        return None
    if isinstance(want, bool):
        return None if isinstance(got, bool) else "expected true or false"
    if isinstance(want, int):
        return None if isinstance(got, int) and not isinstance(got, bool) else "expected a whole number"
    if isinstance(want, float):
        return None if isinstance(got, (int, float)) and not isinstance(got, bool) else "expected a number"
    if OmegaConf.is_list(want):
        return None if OmegaConf.is_list(got) else "expected a list, e.g. [a, b]"
    return None


def _show(value) -> str:
    """A value as one would type it in an override."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_yaml(value).strip()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def validate(cfg: DictConfig) -> None:
    """Checks that Hydra cannot express; each error says which key to change."""
    if cfg.resume not in (True, False, "last", "best"):
        raise ConfigError(f"resume={cfg.resume}: use resume=true (from last.ckpt), resume=best (from best.ckpt) "
                          f"or resume=false")
    run = str(cfg.run)
    if "/" in run or run in ("teachers", ".", ".."):
        raise ConfigError(f"run={run!r} must be a plain folder name (not 'teachers', no '/')")
    if cfg.task == "distill":
        if "synthesizer" not in cfg:
            raise ConfigError(f"recipe '{cfg.recipe}' names no synthesizer: add `- override /synthesizer: NAME` to "
                              f"its defaults, or a `synthesizer:` section with a registered `name`")
        d = cfg.distill
        for key in ("epochs", "iterations_per_epoch", "synth_every", "kd_steps", "batch_size"):
            if int(d[key]) < 1:
                raise ConfigError(f"distill.{key} must be >= 1, got {d[key]}")
        if cfg.synthesizer.batch_size < 1:
            raise ConfigError("synthesizer.batch_size must be >= 1")


def unset_values_message(cfg: DictConfig, how: str = "") -> str | None:
    """What a run needs that the recipe leaves to the user (its `???` values, all of them paths to data, such as
    data.root), as the fix to type (`how` goes before each `key=PATH`, e.g. "--set "), or None when nothing is
    missing. A composed recipe may leave them unset; a run may not."""
    unset = object()  # select() gives the default for a key that exists but holds `???`
    keys = [k for k in _flat_keys(cfg) if OmegaConf.select(cfg, k, default=unset) is unset]
    if not keys:
        return None
    fixes = " ".join(f"{how}{k}=PATH" for k in keys)
    return (f"recipe '{cfg.recipe}' needs {', '.join(keys)}, which it leaves to you: add {fixes} (data.root: the "
            f"data set's folder, or an ImageFolder tree or .tar/.tar.gz archive of one such as CIFAR-10's "
            f"train.tar.gz)")


def to_plain(cfg: DictConfig) -> dict:
    """The resolved recipe as plain containers (safe in weights_only checkpoints and JSON)."""
    return OmegaConf.to_container(cfg, resolve=True)
