"""The layout the code promises: one folder per stage with its `stage.py` entry, output folders declared once
(pipeline/common/layout.py) and read alike by dvc.yaml, the CLI and the stages' argparse defaults, and no Dagster
import in pipeline/."""

import ast
import importlib

import pytest
import yaml

from pipeline.common.layout import RUNS_DIR, STAGE_DIRS
from tests_helpers import ROOT

STAGE_PACKAGES = {"sim_workcell": "workcell", "demos": "demos", "bc_policy": "bc", "scene_capture": "capture",
                  "gaussian_splat": "splat", "collision_mesh": "mesh", "usd_twin": "twin", "rl_policy": "rl",
                  "eval_report": "eval"}


def test_dvc_yaml_declares_the_same_stages_and_output_folders():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGE_DIRS)
    for name, spec in stages.items():
        assert spec["outs"] == [STAGE_DIRS[name]], name
        assert spec["cmd"] == f"twinloop run {name}"
        for dep in spec["deps"]:
            assert (ROOT / dep).exists() or dep in STAGE_DIRS.values(), f"{name}: dependency {dep} does not exist"


@pytest.mark.parametrize("asset", sorted(STAGE_PACKAGES))
def test_every_asset_has_a_stage_entry_and_a_config_section(asset):
    package = STAGE_PACKAGES[asset]
    assert (ROOT / "pipeline" / package / "stage.py").is_file()
    stage = ast.parse((ROOT / "pipeline" / package / "stage.py").read_text())
    assert f"build_{asset}" in {n.name for n in stage.body if isinstance(n, ast.FunctionDef)}
    doc = ast.get_docstring(stage)
    assert doc and f"docs/{package}.md" in doc, f"pipeline/{package}/stage.py: its docstring links its docs page"
    assert (ROOT / "docs" / f"{package}.md").is_file()
    assert (ROOT / "pipeline" / package / "config.py").is_file()


def test_the_stages_argparse_defaults_are_the_declared_folders():
    for module, flags in (("pipeline.rl.stage", {"--twin": "usd_twin", "--bc": "bc_policy", "--out": "rl_policy"}),
                          ("pipeline.eval.stage", {"--twin": "usd_twin", "--bc": "bc_policy", "--rl": "rl_policy",
                                                   "--out": "eval_report"})):
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        for flag, stage in flags.items():
            assert f'"{flag}", default=STAGE_DIRS["{stage}"]' in source, (module, flag)
    cli = importlib.import_module("pipeline.cli")
    assert cli.STAGE_DIRS is STAGE_DIRS and cli.RUNS_DIR == RUNS_DIR


def test_nothing_in_pipeline_imports_dagster():
    offenders = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0].startswith("dagster")]
    assert not offenders
