"""Scaffolding for the Dagster-layer tests: a throw-away Twinloop project (git + DVC repo) to materialize into, so
no test touches the repository's own ./data and ./models."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests_helpers import ROOT

CODE = ("dvc.yaml", ".dvcignore", "pipeline", ".gitignore")  # pipeline/: the stages' code deps


def _merge(into: dict, changes: dict) -> None:
    """Nested dict.update: `{"demos": {"checks": {"min_episodes": 2}}}` sets one key and keeps its siblings."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def make_tiny_project(root: Path, recipe: dict, models: dict | None = None, code=CODE) -> Path:
    """A tiny Twinloop project at `root`: `code` copied from the repository, the repository's params.yaml with the
    `recipe` changes merged in, `models` ({"models/twin": folder}) copied in, then `git init` and `dvc init`."""
    root.mkdir(parents=True, exist_ok=True)
    for name in code:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    _merge(params, recipe)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for dest, src in (models or {}).items():
        shutil.copytree(src, root / dest)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def tiny_project():
    """`tiny_project(root, recipe_changes, models=..., code=...)` -> root (see make_tiny_project); session-scoped so
    module-scoped fixtures can use it too."""
    return make_tiny_project
