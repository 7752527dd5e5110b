"""Fixtures shared by the tests. Plug-ins named by any recipe on the search path (`DFKD_RECIPE_PATH` adds
folders) are imported first, so every registered synthesizer, built-in or plug-in, is under test."""
import pytest

from dfkd.plugins import recipe_plugins

recipe_plugins()


@pytest.fixture
def tiny():
    """(teacher, student, ctx): a random ResNet-8 pair on 1x12x12 images of 4 classes."""
    from tests.helpers import tiny_pair

    return tiny_pair()
