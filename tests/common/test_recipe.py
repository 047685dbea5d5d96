import pytest
import yaml

from pipeline.common.recipe import Recipe, RecipeError, load_recipe, parse_recipe
from tests_helpers import ROOT


def test_default_params_file_is_valid_and_complete():
    recipe = load_recipe(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(Recipe.model_fields)  # every section is spelled out in the file
    assert recipe.workcell.cube.size == raw["workcell"]["cube"]["size"]


def test_unknown_top_level_section_is_named():
    with pytest.raises(RecipeError, match=r"unknown key 'workcel'.*did you mean 'workcell'"):
        parse_recipe({"workcel": {}})


def test_mistyped_nested_key_is_named_with_suggestion():
    with pytest.raises(RecipeError, match=r"unknown key 'workcell\.cube\.sise'.*did you mean 'size'"):
        parse_recipe({"workcell": {"cube": {"sise": 0.025}}})


def test_wrong_value_is_named():
    with pytest.raises(RecipeError, match=r"'expert\.eval_episodes'"):
        parse_recipe({"expert": {"eval_episodes": "many"}})
    with pytest.raises(RecipeError, match=r"'workcell\.cube\.size'"):
        parse_recipe({"workcell": {"cube": {"size": 0.2}}})  # not a 2-3 cm cube
    with pytest.raises(RecipeError, match="must not exceed"):
        parse_recipe({"workcell": {"cube": {"spawn_x": {"low": 0.3, "high": 0.1}}}})


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("workcell: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_section_hash_tracks_only_its_section():
    base = parse_recipe({})
    changed = parse_recipe({"expert": {"seed": 7}})
    assert base.section_hash("expert") != changed.section_hash("expert")
    assert base.section_hash("workcell") == changed.section_hash("workcell")


def test_the_gpu_rl_recipe_is_params_yaml_with_only_the_rl_scale_changed():
    """bench/params_rl_gpu.yaml is what the GPU rows of bench/RESULTS.md ran: the default recipe, scaled up in
    `rl` (and `rl.alpha`: the CPU default's 20 iterations keep a smaller one) and in the evaluation's size (100
    pairs, 16 workers) only. If params.yaml changes and it does not follow, the GPU figures describe another recipe."""
    default = load_recipe(ROOT / "params.yaml").model_dump(mode="json")
    gpu = load_recipe(ROOT / "bench" / "params_rl_gpu.yaml").model_dump(mode="json")
    scaled = {"rl": {"num_envs", "iterations", "save_every", "eval_episodes", "alpha"}, "eval": {"pairs", "workers"}}
    assert {k: v for k, v in gpu.items() if k not in scaled} == {k: v for k, v in default.items() if k not in scaled}
    for section, keys in scaled.items():
        assert {k: v for k, v in gpu[section].items() if k not in keys} == \
            {k: v for k, v in default[section].items() if k not in keys}
