import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parents[1]
REAL_RECORDING = ROOT.parent / "shared" / "data" / "so101-real-pickplace"


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
