"""Every shipped model's recipe is a valid `python -m dap train` command (tools/train_zoo.py)."""

import pytest

from dap.cli import build_parser, parse_assignments
from dap.config import from_dict
from dap.engine.train import TrainConfig
from dap.experiments import ZOO_CATEGORIES, zoo_command, zoo_recipes
from dap.methods import REGISTRY, method_config
from dap.profiles import profile


@pytest.mark.parametrize("name", sorted(zoo_recipes()))
def test_recipe_parses_into_strict_configs(name):
    if name not in REGISTRY:
        pytest.fail(f"zoo recipe for {name!r} but no such method")
    args = build_parser().parse_args(zoo_command(name, "brick"))
    assert args.method == name and args.data == "builtin:brick"
    assert args.export == f"{name}-builtin-brick" and args.out.endswith(f"{name}-brick")
    # the same strict checks the train command applies before any work
    tcfg = from_dict(TrainConfig, {**profile("ci").train_defaults(),
                                   **parse_assignments(args.train_set)})
    method_config(name, "ci", **parse_assignments(args.set))
    assert tcfg.batch_size == 8


def test_every_registered_method_has_a_recipe_and_the_categories_are_builtin():
    assert set(zoo_recipes()) == set(REGISTRY)
    assert ZOO_CATEGORIES == ("brick", "grass", "gravel")


def test_unknown_method_is_a_clear_error():
    from dap.config import ConfigError

    with pytest.raises(ConfigError, match="no zoo recipe"):
        zoo_command("patchcore", "brick")


def test_benchmark_uses_a_shipped_model_only_for_variants_within_its_recipe():
    from dap.experiments import _within, variants

    recipes = zoo_recipes()
    # the plain row of every method is its zoo recipe (DDAD's domain adaptation and DiffAD's
    # phase lengths are part of it) ...
    for name in recipes:
        assert _within(variants(name)[name], recipes[name]), name
    # ... rows that change training do not get the shipped model
    assert not _within(variants("glad")["glad no-ATP"], recipes["glad"])
    assert not _within(variants("diffad")["diffad clean-cond"], recipes["diffad"])
