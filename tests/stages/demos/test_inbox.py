"""The demo door (pipeline/demos/inbox.py, frames.py, stage.merge_into): what it refuses, that a refusal leaves
`data/demos` byte-identical, and that it never crashes on a malformed dataset."""

import json
import shutil

import numpy as np
import pytest

from demo_batches import damage_mid_episode, rewrite_dataset, tree_digest
from pipeline.demos.checks import DemoData, check_video_frames, failures, run_checks


def _decode_every_item(root, episodes):
    """Every frame of `episodes` read through LeRobotDataset (the training path, lerobot's torchcodec decoder)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.demos.stage import DEMOS_REPO_ID

    ds = LeRobotDataset(DEMOS_REPO_ID, root=root)
    n = 0
    for ep in episodes:
        for idx in range(int(ds.meta.episodes[ep]["dataset_from_index"]), int(ds.meta.episodes[ep]["dataset_to_index"])):
            item = ds[idx]
            assert all(item[k].shape[0] == 3 for k in ds.meta.video_keys)
            n += 1
    return n


def test_inbox_merges_a_valid_batch_and_quarantines_bad_ones(recorded, small_recipe, demos_and_inbox):
    from pipeline.demos.inbox import BatchRejected, ingest_batch, pending_batches

    demos_root, inbox = demos_and_inbox
    shutil.copytree(recorded, inbox / "good")
    shutil.copytree(recorded, inbox / "bad")
    next((inbox / "bad" / "videos").rglob("*.mp4")).unlink()
    (inbox / "linked").symlink_to(recorded)
    assert pending_batches(inbox) == ["bad", "good", "linked"]

    before = tree_digest(demos_root)
    for name, reason in (("bad", "missing"), ("linked", "symlink")):
        with pytest.raises(BatchRejected, match=reason):
            ingest_batch(inbox, name, demos_root, small_recipe)
        assert (inbox / "rejected" / name / "REJECTED.txt").read_text().count(reason) >= 1
        assert tree_digest(demos_root) == before  # demos untouched
    assert recorded.is_dir() and any(recorded.rglob("*.mp4"))  # the symlink's target was not moved
    for name in ("../demos", "rejected"):
        with pytest.raises(BatchRejected, match="plain folder name"):
            ingest_batch(inbox, name, demos_root, small_recipe)
    assert (inbox / "rejected" / "bad").is_dir()  # refusing a name moved nothing
    assert pending_batches(inbox, settled_for_s=3600) == []  # just written: not settled yet

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.demos.stage import DEMOS_REPO_ID

    batch_last = LeRobotDataset(DEMOS_REPO_ID, root=inbox / "good")[-1]
    LeRobotDataset(DEMOS_REPO_ID, root=demos_root)[0]  # this process now holds the old videos open (lerobot's cache)
    result = ingest_batch(inbox, "good", demos_root, small_recipe)
    assert result["episodes_before"] == 2 and result["episodes_after"] == 4
    # The new episodes' frames decode from the merged videos in the same process (it used to read the old files).
    merged_last = LeRobotDataset(DEMOS_REPO_ID, root=demos_root)[-1]
    for cam in (k for k in merged_last if k.startswith("observation.images.")):
        assert np.array_equal(merged_last[cam].numpy(), batch_last[cam].numpy()), cam
    assert (inbox / "accepted" / "good").is_dir() and pending_batches(inbox) == []
    assert not failures(run_checks(DemoData.load(demos_root), small_recipe.demos.checks))
    assert json.loads((demos_root / "config.json").read_text())["merged_batches"] == ["good"]


def test_video_damaged_mid_episode_is_rejected_and_a_later_batch_decodes_every_frame(recorded, small_recipe,
                                                                                     demos_and_inbox):
    from pipeline.demos.inbox import BatchRejected, ingest_batch

    demos_root, inbox = demos_and_inbox
    shutil.copytree(recorded, inbox / "damaged")
    damage_mid_episode(inbox / "damaged", "front", episode=0)
    # What the old door looked at still passes: the first and last frame of every episode decode.
    outcomes = {o.name: o for o in run_checks(DemoData.load(inbox / "damaged"), small_recipe.demos.checks)}
    assert outcomes["videos"].passed, outcomes["videos"].message
    assert not outcomes["video_frames"].passed

    before = tree_digest(demos_root)
    with pytest.raises(BatchRejected, match=r"episode 0 frame \d+ .*observation\.images\.front") as refused:
        ingest_batch(inbox, "damaged", demos_root, small_recipe)
    assert "does not decode" in str(refused.value) or "missing" in str(refused.value)
    assert "episode 0 frame" in (inbox / "rejected" / "damaged" / "REJECTED.txt").read_text()
    assert tree_digest(demos_root) == before and not (demos_root.parent / "demos.partial").exists()

    shutil.copytree(recorded, inbox / "valid")
    result = ingest_batch(inbox, "valid", demos_root, small_recipe)
    assert result["episodes_after"] == 4
    merged = DemoData.load(demos_root)
    assert merged.meta.total_frames == 2 * DemoData.load(recorded).meta.total_frames
    assert check_video_frames(merged).passed  # every frame of every camera, old and new
    assert _decode_every_item(demos_root, [2, 3]) == DemoData.load(recorded).meta.total_frames


def test_merge_is_verified_before_it_replaces_the_demos(recorded, demos_and_inbox):
    """A damaged batch that reached the merge anyway (screening skipped): lerobot's stream copy drops the damaged
    packets, the verification finds the frames missing, and the demos stay as they were."""
    from pipeline.demos.stage import MergeRefused, merge_into

    demos_root, inbox = demos_and_inbox
    shutil.copytree(recorded, inbox / "damaged")
    damage_mid_episode(inbox / "damaged", "front", episode=0)
    before = tree_digest(demos_root)
    with pytest.raises(MergeRefused, match=r"episode 2 .*observation\.images\.front"):
        merge_into(demos_root, inbox / "damaged")
    assert tree_digest(demos_root) == before and not (demos_root.parent / "demos.partial").exists()


def test_dataset_without_action_is_quarantined_with_a_message(recorded, small_recipe, demos_and_inbox):
    from lerobot.datasets.dataset_tools import remove_feature
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.demos.inbox import BatchRejected, ingest_batch

    demos_root, inbox = demos_and_inbox
    remove_feature(LeRobotDataset("local/src", root=recorded), "action", output_dir=inbox / "no-action")
    assert "action" not in json.loads((inbox / "no-action" / "meta" / "info.json").read_text())["features"]
    before = tree_digest(demos_root)
    with pytest.raises(BatchRejected) as refused:
        ingest_batch(inbox, "no-action", demos_root, small_recipe)
    message = str(refused.value)
    assert "feature 'action' is missing" in message and "KeyError" not in message
    text = (inbox / "rejected" / "no-action" / "REJECTED.txt").read_text()
    assert "feature 'action' is missing" in text and "'action' is missing from the batch" in text
    assert not (inbox / "no-action").exists() and tree_digest(demos_root) == before


def test_other_rig_batch_gets_every_reason_in_one_message(recorded, small_recipe, demos_and_inbox):
    """Recorded at 15 fps, cameras named top/side, one NaN action: three families of faults, all reported."""
    from pipeline.demos.inbox import BatchRejected, ingest_batch

    demos_root, inbox = demos_and_inbox

    def nan_action(episode, frame, values):
        if episode == 1 and frame == 3:
            values["action"] = values["action"].copy()
            values["action"][4] = np.nan
    rewrite_dataset(recorded, inbox / "other-rig", fps=15, cameras={"front": "top", "wrist": "side"}, edit=nan_action)
    with pytest.raises(BatchRejected) as refused:
        ingest_batch(inbox, "other-rig", demos_root, small_recipe)
    message = str(refused.value)
    assert "fps 15 differs from data/demos (30)" in message
    assert "cameras differ from data/demos" in message and "observation.images.top" in message
    assert "episode 1 frame 3: action[wrist_roll.pos] = nan" in message
    assert "Invalid frame index" not in message  # its videos are fine: no misleading decoder error
    assert all(r in (inbox / "rejected" / "other-rig" / "REJECTED.txt").read_text()
               for r in ("fps 15", "cameras differ", "action[wrist_roll.pos] = nan"))


def test_screening_never_crashes(recorded, small_recipe, demos_and_inbox, monkeypatch):
    """A check that raises, or a dataset whose metadata does not parse: quarantined with the error, never raised."""
    import pipeline.demos.checks as checks
    from pipeline.demos.inbox import BatchRejected, ingest_batch

    demos_root, inbox = demos_and_inbox
    shutil.copytree(recorded, inbox / "garbled")
    (inbox / "garbled" / "meta" / "info.json").write_text("{ not json")
    with pytest.raises(BatchRejected, match="not a readable LeRobot dataset"):
        ingest_batch(inbox, "garbled", demos_root, small_recipe)

    def broken(*args, **kwargs):
        raise RuntimeError("disk went away")
    monkeypatch.setattr(checks, "check_timing", broken)
    shutil.copytree(recorded, inbox / "unlucky")
    with pytest.raises(BatchRejected, match="timing: could not run: RuntimeError: disk went away"):
        ingest_batch(inbox, "unlucky", demos_root, small_recipe)
    reasons = [line for line in (inbox / "rejected" / "unlucky" / "REJECTED.txt").read_text().splitlines()
               if line.startswith("- ")]
    assert reasons == ["- timing: could not run: RuntimeError: disk went away"]  # every other check ran and passed


def test_video_frames_names_missing_frames_and_bad_timestamps(recorded, small_recipe, tmp_path):
    """Parquet rows whose frames are not in the video (more rows than frames), and timestamps that do not match."""
    import pandas as pd

    root = tmp_path / "shifted"
    shutil.copytree(recorded, root)
    episodes = next((root / "meta" / "episodes").rglob("*.parquet"))
    table = pd.read_parquet(episodes)
    table.loc[1, "videos/observation.images.wrist/from_timestamp"] += 0.5  # episode 1 points half a second late
    table.to_parquet(episodes)
    o = check_video_frames(DemoData.load(root))
    assert not o.passed and "observation.images.front" not in o.message
    assert "episode 1 frame" in o.message and "observation.images.wrist" in o.message and "missing" in o.message


def test_batch_without_demos_to_join_stays_in_the_inbox(recorded, small_recipe, tmp_path):
    from pipeline.demos.inbox import ingest_batch
    from pipeline.demos.stage import DemoInputError

    inbox = tmp_path / "inbox"
    shutil.copytree(recorded, inbox / "early")
    with pytest.raises(DemoInputError, match="materialize demos first"):
        ingest_batch(inbox, "early", tmp_path / "demos", small_recipe)
    assert (inbox / "early" / "meta" / "info.json").is_file() and not (inbox / "rejected").exists()
