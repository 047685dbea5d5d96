"""The `demos` stage, its quality checks and the inbox, on small real datasets recorded from the sim workcell."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.demos.checks import CHECK_SPECS, DemoData, failures, run_checks
from tests_helpers import REAL_RECORDING as REAL


@pytest.fixture
def copy_of(recorded, tmp_path):
    def make(name="batch"):
        dst = tmp_path / name
        shutil.copytree(recorded, dst)
        return dst
    return make


def _outcomes(root, recipe):
    return {o.name: o for o in run_checks(DemoData.load(root), recipe.demos.checks)}


def _edit_frames(root: Path, edit):
    path = next((root / "data").rglob("*.parquet"))
    frame = pd.read_parquet(path)
    edit(frame)
    frame.to_parquet(path)


def test_recorded_dataset_opens_with_lerobot_and_passes_every_check(recorded, small_recipe):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("twinloop/demos", root=recorded)
    assert ds.num_episodes == 2 and ds.fps == 30 and ds.meta.robot_type == "so101_follower"
    assert set(ds.meta.video_keys) == {"observation.images.front", "observation.images.wrist"}
    assert ds.meta.features["action"]["names"][0] == "shoulder_pan.pos"
    item = ds[0]
    assert item["observation.images.front"].shape == (3, 48, 64)
    assert item["task"] == small_recipe.demos.task
    outcomes = _outcomes(recorded, small_recipe)
    assert [(o.name, o.blocking) for o in outcomes.values()] == list(CHECK_SPECS)  # what Dagster declares
    assert all(o.passed for o in outcomes.values()), {k: o.message for k, o in outcomes.items() if not o.passed}


def test_nan_action_is_caught(copy_of, small_recipe):
    root = copy_of()

    def poison(frame):
        frame.at[5, "action"] = np.array([np.nan, 0, 0, 0, 0, 0], dtype=np.float32)
    _edit_frames(root, poison)
    o = _outcomes(root, small_recipe)["finite_values"]
    assert not o.passed and "frame 5" in o.message and "shoulder_pan.pos" in o.message


def test_out_of_limit_joint_is_caught(copy_of, small_recipe):
    root = copy_of()

    def push(frame):
        a = np.array(frame.at[7, "action"], dtype=np.float32)
        a[2] = 150.0
        frame.at[7, "action"] = a
    _edit_frames(root, push)
    o = _outcomes(root, small_recipe)["joint_limits"]
    assert not o.passed and "elbow_flex.pos" in o.message and "150" in o.message


def test_wrong_fps_is_caught(copy_of, small_recipe):
    root = copy_of()
    info = json.loads((root / "meta" / "info.json").read_text())
    info["fps"] = 15
    (root / "meta" / "info.json").write_text(json.dumps(info))
    o = _outcomes(root, small_recipe)["timing"]
    assert not o.passed and "15 fps" in o.message


def test_deleted_video_is_caught(copy_of, small_recipe):
    root = copy_of()
    next((root / "videos" / "observation.images.wrist").rglob("*.mp4")).unlink()
    o = _outcomes(root, small_recipe)["videos"]
    assert not o.passed and "observation.images.wrist" in o.message and "missing" in o.message


def test_missing_feature_is_caught(copy_of, small_recipe):
    root = copy_of()
    info = json.loads((root / "meta" / "info.json").read_text())
    del info["features"]["observation.state"]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    o = _outcomes(root, small_recipe)["schema"]
    assert not o.passed and "'observation.state' is missing" in o.message


def test_rows_lost_from_data_are_caught_by_the_episode_table(copy_of, small_recipe):
    root = copy_of()
    _edit_frames(root, lambda frame: frame.drop(frame[frame.episode_index == 1].index[-10:], inplace=True))
    o = _outcomes(root, small_recipe)["episode_table"]
    assert not o.passed and "episode 1:" in o.message and "rows in data/, meta/episodes says" in o.message
    assert "total_frames" in o.message


def test_idle_episode_is_a_warning_not_a_block(copy_of, small_recipe):
    root = copy_of()

    def freeze(frame):  # episode 1: the arm holds still
        still = frame[frame.episode_index == 1].index
        first = np.array(frame.at[still[0], "action"])
        for i in still:
            frame.at[i, "action"] = first
            frame.at[i, "observation.state"] = first
    _edit_frames(root, freeze)
    outcomes = _outcomes(root, small_recipe)
    assert not outcomes["idle_episodes"].passed and "episode 1" in outcomes["idle_episodes"].message
    assert not outcomes["idle_episodes"].blocking


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real SO-101 recording absent")
def test_real_recording_missing_videos_refused_then_accepted_state_only(small_recipe, tmp_path):
    from pipeline.demos.stage import DemoInputError, build_demos

    local = small_recipe.demos.model_copy(update={"source": "local", "local_path": str(REAL)})
    with pytest.raises(DemoInputError, match=r"observation\.images\.front.*observation\.images\.top"):
        build_demos(small_recipe.model_copy(update={"demos": local}), tmp_path / "demos")
    assert not (tmp_path / "demos").exists()
    state_only = local.model_copy(update={"state_only": True, "checks": local.checks.model_copy(
        update={"min_episodes": 4})})
    recipe = small_recipe.model_copy(update={"demos": state_only})
    build_demos(recipe, tmp_path / "demos")
    outcomes = run_checks(DemoData.load(tmp_path / "demos"), recipe.demos.checks, require_camera=False)
    assert not failures(outcomes), [o.message for o in failures(outcomes)]
    assert DemoData.load(tmp_path / "demos").meta.total_frames == 1492


def test_hub_source_offline_is_a_clear_error(small_recipe, tmp_path, monkeypatch):
    from pipeline.demos.stage import DemoInputError, build_demos

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = small_recipe.demos.model_copy(update={"source": "hub", "repo_id": "someone/so101_pick"})
    with pytest.raises(DemoInputError, match="HF_HUB_OFFLINE"):
        build_demos(small_recipe.model_copy(update={"demos": hub}), tmp_path / "demos")
