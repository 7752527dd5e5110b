import pytest

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
