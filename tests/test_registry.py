from pathlib import Path

import pytest
import yaml

from dfkd.models import MODELS, build_model
from dfkd.registry import Registry, RegistryError
from dfkd.synthesizers import SYNTHESIZERS


def test_register_bare_and_named_and_build():
    r = Registry("thing")

    @r.register
    def alpha(x=1):
        return ("alpha", x)

    @r.register("b")
    class Beta:
        def __init__(self, y):
            self.y = y

    assert r.build("alpha", x=3) == ("alpha", 3)
    assert r.build("b", y=2).y == 2
    assert r.names() == ["alpha", "b"]


def test_unknown_name_lists_known_and_suggests():
    r = Registry("thing")
    r.register("resnet8")(lambda: None)
    with pytest.raises(RegistryError, match=r"Did you mean resnet8.*Known: resnet8"):
        r.get("resnet9")


def test_duplicate_registration_is_an_error():
    r = Registry("thing")
    r.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="already registered"):
        r.register("a")(lambda: 2)


def test_builtin_registries():
    assert "deepinversion" in SYNTHESIZERS
    for name in ("resnet8", "resnet18", "resnet34", "wrn40_2", "vgg11", "lenet5", "lenet5_half"):
        assert name in MODELS


def test_timm_fallback_builds_any_timm_model_without_download():
    m = build_model("resnet10t", num_classes=7, in_chans=1)
    import torch

    assert m(torch.rand(2, 1, 32, 32)).shape == (2, 7)


def _signature_defaults(cls) -> dict:
    """Constructor defaults over the class hierarchy (a subclass's default wins)."""
    import inspect

    out = {}
    for c in reversed(cls.__mro__):
        if "__init__" in c.__dict__:
            for n, p in inspect.signature(c.__dict__["__init__"]).parameters.items():
                if p.default is not inspect.Parameter.empty:
                    out[n] = p.default
    return out


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


GROUPS = Path(__file__).resolve().parents[1] / "recipes" / "synthesizer"


def _group(name: str) -> dict:
    """A synthesizer group YAML with the groups it builds on (`defaults: [fastdfkd]`) merged under it."""
    raw = yaml.safe_load((GROUPS / f"{name}.yaml").read_text())
    merged = {}
    for base in raw.pop("defaults", []):
        if base != "_self_":
            merged.update(_group(base))
    return {**merged, **raw}


@pytest.mark.parametrize("group", sorted(p.stem for p in GROUPS.glob("*.yaml")))
def test_synthesizer_group_defaults_are_the_constructor_defaults(group):
    """Defaults live in the constructor signatures: a synthesizer group YAML (`synthesizer=NAME`) names only
    parameters the class takes, each at the class's default. A preset over another group (fastdfkd10:
    `defaults: [fastdfkd]`, the paper's Fast-10 settings) differs where it says, and names real parameters only."""
    own = yaml.safe_load((GROUPS / f"{group}.yaml").read_text())
    values = _group(group)
    cls = SYNTHESIZERS.get(values.pop("name"))
    defaults = _signature_defaults(cls)
    for key, value in values.items():
        assert key in defaults, f"synthesizer={group}: {key} is not a parameter of {cls.__name__}"
        if "defaults" not in own or key not in own:
            assert _plain(value) == _plain(defaults[key]), \
                f"synthesizer={group}: {key} is {value!r} in the YAML and {defaults[key]!r} in {cls.__name__}"
