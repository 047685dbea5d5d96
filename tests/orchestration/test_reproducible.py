"""Outputs that reproduce: the same stage run through the CLI (`twinloop run`, what `dvc repro` runs) and through
its Dagster asset writes the same bytes, and no output names the checkout it was made in."""

import hashlib
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipeline.common.layout import STAGE_DIRS

STAGES = ("sim_workcell", "scene_capture")  # deterministic and quick on a tiny recipe


def folder_md5(folder: Path) -> str:
    """md5 over every file's relative path and content (what DVC's .dir md5 depends on)."""
    digest = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(hashlib.md5(path.read_bytes()).digest())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_project):
    return tiny_project(tmp_path_factory.mktemp("reproducible"), {
        "expert": {"eval_episodes": 2},
        "workcell": {"cameras": {"width": 64, "height": 48}},
        "capture": {"views": 8, "width": 64, "height": 48, "min_images": 8},
        "project": {"dvc_remote": ""},
    })


@pytest.mark.slow
def test_cli_and_asset_write_the_same_bytes(project):
    from assets.sim import sim_workcell
    from assets.twin import scene_capture
    from resources import default_resources

    cli = {}
    for stage in STAGES:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", stage], cwd=project, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        cli[stage] = folder_md5(project / STAGE_DIRS[stage])
    result = dg.materialize([sim_workcell, scene_capture], resources=default_resources(str(project)))
    assert result.success
    for stage in STAGES:
        out = project / STAGE_DIRS[stage]
        assert folder_md5(out) == cli[stage], f"{stage}: the asset wrote other bytes than the CLI"
        for path in out.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".xml", ".jsonl", ".txt", ".usd", ".usda"):
                text = path.read_text(errors="ignore")
                assert str(project) not in text and str(project.resolve()) not in text, \
                    f"{path.relative_to(project)} names the checkout path"
        assert (out / "config.json").is_file()
