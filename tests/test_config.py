import pytest

from dfkd.runs.config import ConfigError, compose, list_recipes, to_plain

RECIPES = list_recipes()


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_resolves(recipe):
    cfg = compose(recipe)
    assert cfg.recipe == recipe and cfg.run == recipe
    plain = to_plain(cfg)
    assert plain["task"] in ("distill", "teacher")


def test_overrides_and_group_swaps():
    cfg = compose("deepinversion_resnet", ["synthesizer.iterations=7", "run=abc", "student=wrn16_1", "seed=3"])
    assert cfg.synthesizer.iterations == 7 and cfg.run == "abc" and cfg.student.arch == "wrn16_1" and cfg.seed == 3


def test_typo_in_override_names_the_nearest_key():
    with pytest.raises(ConfigError, match=r"synthesizer.iteration.*did you mean: synthesizer.iterations"):
        compose("deepinversion_resnet", ["synthesizer.iteration=7"])


def test_typo_in_a_recipe_with_a_mandatory_value_names_the_nearest_key():
    """data.root is `???` until the user gives it: the hint must still be built, and the mandatory key named."""
    with pytest.raises(ConfigError, match=r"'data.roots' is not a key.*did you mean: data.root") as e:
        compose("teacher_resnet20_cifar10", ["data.roots=x"])
    assert "'data.root' is not a key" not in str(e.value)
    with pytest.raises(ConfigError, match=r"'out_dir' is not a key") as e:
        compose("teacher_resnet20_cifar10", ["data.root=x", "out_dir=y"])
    assert "'data.root' is not a key" not in str(e.value)


def test_unknown_recipe_lists_recipes():
    with pytest.raises(ConfigError, match=r"unknown recipe 'deepinversion_resnt'.*Did you mean deepinversion_resnet"):
        compose("deepinversion_resnt")


def test_unknown_group_option_lists_options():
    with pytest.raises(ConfigError, match=r"resnet8_half"):
        compose("deepinversion_resnet", ["student=resnet9000"])


def test_invalid_values_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match="distill.kd_steps"):
        compose("deepinversion_resnet", ["distill.kd_steps=0"])
    with pytest.raises(ConfigError, match="run="):
        compose("deepinversion_resnet", ["run=teachers"])


def test_help_lists_recipes_and_an_unknown_recipe_is_a_clear_error(capsys):
    from dfkd.runs.cli import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for r in RECIPES:
        assert r in out
    assert main(["recipe=nope"]) == 2 and "unknown recipe 'nope'" in capsys.readouterr().err


def test_every_recipe_sets_only_options_the_primary_config_declares():
    """No recipe needs `+`/`++`: what a recipe sets outside the config groups, base.yaml declares."""
    base = compose("example_noise_resnet")  # base + an inline synthesizer
    for recipe in RECIPES:
        cfg = compose(recipe)
        for section in ("distill", "bank", "train", "log", "debug", "paths", "trainer"):
            extra = set(cfg[section]) - set(base[section])
            assert not extra, f"{recipe}: {section}.{extra} is not declared in recipes/base.yaml"


def test_run_folder_recipe_names_the_shipped_teachers_folder_not_this_checkout(tmp_path):
    """recipe.yaml keeps `${dfkd_teachers:}` for a shipped teacher, so a run (or a bench sitting) resumes, and
    `bench --resume` reads it back, from another clone of the repository; read back, it is the same recipe."""
    from dfkd.resources import TEACHERS_DIR
    from dfkd.runs.rundir import portable_yaml, settings_changed

    cfg = compose("fastdfkd_cifar10", ["data.root=data/cifar10/train.tar.gz", "run=r"])
    text = portable_yaml(cfg)
    assert "checkpoint: ${dfkd_teachers:}/resnet20_cifar10.pt" in text and str(TEACHERS_DIR) not in text
    (tmp_path / "recipe.yaml").write_text(text)
    assert settings_changed(cfg, tmp_path) == []
    own = compose("fastdfkd_cifar10", ["data.root=data/cifar10/train.tar.gz", "run=r", "teacher.checkpoint=/x/t.pt"])
    assert settings_changed(own, tmp_path) == ["teacher.checkpoint"]  # a teacher of one's own is not the shipped one


TIERS = {"mnist": "mnist_cpu", "cifar10": "cifar10_cpu"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_differs_from_its_tiers_student_protocol_only_where_it_says_why(recipe):
    """Methods of a tier share the student side (recipes/protocol/): every student-side setting a recipe keeps
    otherwise is a declared exception with its reason, and no declared exception is stale."""
    from dfkd.runs.protocol import deviations
    from tests.helpers import recipe_cfg

    cfg = recipe_cfg(recipe)
    differs, declared = deviations(cfg), dict(cfg.protocol.exceptions)
    assert set(differs) == set(declared), (f"{recipe}: differs from protocol {cfg.protocol.name} in {differs}; "
                                           f"declared: {sorted(declared)}")
    assert all(len(str(why)) >= 20 for why in declared.values()), declared


@pytest.mark.parametrize("suite", sorted(TIERS))
def test_every_white_box_method_of_a_tier_follows_the_tiers_protocol(suite):
    """The black-box recipes (dfme, ideal) keep their own student side for now: their student steps follow the
    query budget (docs/notes/protocol.md)."""
    from dfkd.bench.suite import _in_suite
    from tests.helpers import recipe_cfg

    for recipe in RECIPES:
        cfg = recipe_cfg(recipe)
        if _in_suite(suite, recipe, cfg) and cfg.teacher.access == "white":
            assert cfg.protocol.name == TIERS[suite], f"{recipe} is not on the {suite} tier's protocol"
