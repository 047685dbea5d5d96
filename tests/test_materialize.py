"""The `sim_workcell` asset end to end: Dagster materialization -> stage -> DVC commit -> data version."""

import shutil
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from tests_helpers import ROOT


@pytest.fixture
def project(tmp_path):
    """A throw-away copy of the project (git + DVC repo) with a small recipe, so the test never touches ./models."""
    for name in ("dvc.yaml", ".dvcignore", "pipeline"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    recipe = yaml.safe_load((ROOT / "params.yaml").read_text())
    recipe["expert"]["eval_episodes"] = 4
    recipe["project"]["dvc_remote"] = str(tmp_path / "remote")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(recipe))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_materialize_commits_to_dvc_and_sets_data_version(project):
    from assets.sim import expert_solves_task, sim_workcell
    from resources import default_resources

    result = dg.materialize([sim_workcell, expert_solves_task], resources=default_resources(str(project)))
    assert result.success
    mat = result.asset_materializations_for_node("sim_workcell")[0]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    md5 = lock["stages"]["sim_workcell"]["outs"][0]["md5"]
    assert mat.metadata["dvc_md5"].value == md5
    assert mat.tags["dagster/data_version"] == md5
    assert lock["stages"]["sim_workcell"]["params"]["params.yaml"]["expert"]["eval_episodes"] == 4
    assert (project / "remote").is_dir() and any((project / "remote").rglob("*"))  # pushed
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and checks[0].passed
    for name in ("workcell.xml", "workcell.json", "preview.png", "metrics.json"):
        assert (project / "models" / "workcell" / name).is_file()
    # DVC sees the committed output as up to date
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "sim_workcell"], cwd=project,
                            capture_output=True, text=True, check=True)
    assert "changed outs" not in status.stdout


def test_dvc_resource_refuses_a_non_dvc_directory(tmp_path):
    from resources import DvcResource, ProjectPaths
    from resources.dvc import DvcError

    dvc = DvcResource(paths=ProjectPaths(root=str(tmp_path)))
    with pytest.raises(DvcError, match="not a DVC repository"):
        dvc.commit_stage("sim_workcell")
