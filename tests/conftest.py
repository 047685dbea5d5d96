import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="session")
def recipe():
    from pipeline.config import load_recipe

    return load_recipe(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def workcell_xml(recipe, tmp_path_factory):
    """The default workcell, compiled once per test session from the official SO-101 USD (~1 min on 2 cores)."""
    from pipeline.sim.build import compile_workcell

    return compile_workcell(recipe.workcell, tmp_path_factory.mktemp("workcell"))


@pytest.fixture
def workcell(workcell_xml, recipe):
    from pipeline.sim.workcell import Workcell

    wc = Workcell(workcell_xml, recipe.workcell)
    yield wc
    wc.close()


@pytest.fixture(scope="session")
def small_recipe(recipe):
    """Tiny cameras and few episodes: a real recording in seconds, not minutes."""
    cams = recipe.workcell.cameras.model_copy(update={"width": 64, "height": 48})
    checks = recipe.demos.checks.model_copy(update={"min_episodes": 2})
    return recipe.model_copy(update={
        "workcell": recipe.workcell.model_copy(update={"cameras": cams}),
        "demos": recipe.demos.model_copy(update={"episodes": 2, "checks": checks}),
    })


@pytest.fixture(scope="session")
def recorded(small_recipe, workcell_xml, tmp_path_factory):
    from pipeline.demos import build_demos

    root = tmp_path_factory.mktemp("demos") / "demos"
    result = build_demos(small_recipe, root, workcell_xml=workcell_xml)
    assert result["recorded_episodes"] == 2
    return root
