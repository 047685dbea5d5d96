"""Stage `demos`: a LeRobot v3.0 dataset of SO-101 pick-and-place demonstrations in `data/demos`.

Sources (`demos.source` in params.yaml):
  sim    N successful episodes of the sim workcell's scripted expert, cameras `front` and `wrist`, features named
         exactly like a real `so101_follower` recording (failed attempts are discarded, as an operator would)
  local  a LeRobot v3.0 dataset folder (e.g. from `lerobot-record`)
  hub    a Hugging Face dataset repo id (needs network; offline it is a clear error)
Everything is written and read through lerobot's `LeRobotDataset` API; merging uses lerobot's `merge_datasets`.

User guide: docs/demos.md.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.common.artifacts import replace_dir, staging_dir, write_config
from pipeline.common.layout import CONFIG_FILE
from pipeline.common.recipe import Recipe
from pipeline.demos.checks import DemoData
from pipeline.workcell.joints import LEROBOT_JOINT_NAMES

DEMOS_REPO_ID = "twinloop/demos"
ROBOT_TYPE = "so101_follower"
#: the per-frame vectors a state-only copy keeps (environment_state only where the source has it)
NUMERIC_FEATURES = ("observation.state", "action", "observation.environment_state")


class DemoInputError(ValueError):
    """The demo source cannot be used: the message says why."""


def demo_features(width: int, height: int, cameras=("front", "wrist")) -> dict:
    from pipeline.workcell.cell import ENVIRONMENT_STATE_NAMES

    joints = {"dtype": "float32", "shape": (6,), "names": list(LEROBOT_JOINT_NAMES)}
    feats = {"observation.state": dict(joints), "action": dict(joints),
             "observation.environment_state": {"dtype": "float32", "shape": (len(ENVIRONMENT_STATE_NAMES),),
                                               "names": list(ENVIRONMENT_STATE_NAMES)}}
    for cam in cameras:
        feats[f"observation.images.{cam}"] = {"dtype": "video", "shape": (height, width, 3),
                                              "names": ["height", "width", "channels"]}
    return feats


def record_sim_demos(recipe: Recipe, workcell_xml: Path, out_dir: Path, progress: bool = True) -> dict:
    """Record `demos.episodes` successful expert episodes from the sim workcell into a new dataset at `out_dir`."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.workcell.expert import ScriptedExpert
    from pipeline.workcell.cell import Workcell

    cfg, cams = recipe.demos, recipe.workcell.cameras
    workcell = Workcell(workcell_xml, recipe.workcell)
    dataset = LeRobotDataset.create(repo_id=DEMOS_REPO_ID, fps=recipe.workcell.fps, root=out_dir,
                                    robot_type=ROBOT_TYPE, features=demo_features(cams.width, cams.height),
                                    use_videos=True, streaming_encoding=True)
    kept, discarded, seed = 0, [], cfg.seed * 100_000
    max_steps = int(recipe.workcell.episode_seconds * recipe.workcell.fps)
    bar = tqdm(total=cfg.episodes, desc="recording demos", unit="ep", disable=not progress)
    while kept < cfg.episodes:
        if len(discarded) > cfg.episodes:  # the expert should succeed ~99 %: something is wrong, say so
            raise RuntimeError(f"the expert failed {len(discarded)} episodes (seeds {discarded}); check the workcell")
        workcell.reset(seed)
        expert = ScriptedExpert(workcell, recipe.expert, seed)
        expert.plan()
        while not expert.done() and workcell.time_step < max_steps:
            frame = workcell.observation()
            action = expert.act()
            dataset.add_frame({**frame, "action": action, "task": cfg.task})
            workcell.step(action)
        if workcell.cube_in_bin():
            dataset.save_episode()
            kept += 1
            bar.update()
        else:
            dataset.clear_episode_buffer()
            discarded.append(seed)
        seed += 1
    bar.close()
    dataset.finalize()
    workcell.close()
    return {"recorded_episodes": kept, "discarded_seeds": discarded}


def import_local(src: Path, out_dir: Path, state_only: bool) -> dict:
    """Copy a local LeRobot v3.0 dataset; with `state_only`, keep state/action/task and drop the cameras."""
    src = Path(src)
    if not (src / "meta" / "info.json").is_file():
        raise DemoInputError(f"{src} is not a LeRobot dataset: meta/info.json is missing")
    info = json.loads((src / "meta" / "info.json").read_text())
    if info.get("codebase_version") != "v3.0":
        raise DemoInputError(f"{src} is LeRobot {info.get('codebase_version')}, Twinloop needs v3.0 (convert it with "
                             "lerobot's convert_dataset_v21_to_v30)")
    data = DemoData.load(src)
    if state_only:
        return write_state_only(data, out_dir)
    missing = data.missing_videos()
    if missing:
        raise DemoInputError(f"{src}: camera videos missing for {sorted(missing)} (declared in meta/info.json, absent on "
                             "disk); supply them, or set demos.state_only: true to use state/action only")
    shutil.copytree(src, out_dir)
    return {"imported_from": str(src)}


def write_state_only(data: DemoData, out_dir: Path) -> dict:
    """A new dataset with the source's state, action (environment state) and task per frame, via lerobot's writer."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = {k: dict(data.meta.features[k]) for k in NUMERIC_FEATURES if k in data.meta.features}
    dataset = LeRobotDataset.create(repo_id=DEMOS_REPO_ID, fps=data.meta.fps, root=out_dir,
                                    robot_type=data.meta.robot_type, features=feats, use_videos=False)
    tasks = {int(row.task_index): str(task) for task, row in data.meta.tasks.iterrows()}
    for _, group in data.episodes():
        for _, row in group.iterrows():
            dataset.add_frame({**{k: np.asarray(row[k], dtype=np.float32) for k in feats},
                               "task": tasks[int(row["task_index"])]})
        dataset.save_episode()
    dataset.finalize()
    return {"imported_from": str(data.root), "dropped_cameras": data.camera_keys}


def download_hub(repo_id: str, out_dir: Path) -> dict:
    if not repo_id:
        raise DemoInputError("demos.source is 'hub' but demos.repo_id is empty")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise DemoInputError(f"cannot download {repo_id!r}: HF_HUB_OFFLINE is set (no network); download it "
                             "elsewhere and use demos.source: local")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=repo_id, repo_type="dataset", local_dir=out_dir)
    except Exception as exc:  # network, auth or not-found: all mean the same to the user
        raise DemoInputError(f"downloading {repo_id!r} from the Hugging Face Hub failed: {exc}") from exc
    return {"downloaded": repo_id}


def build_demos(recipe: Recipe, out_dir: Path, workcell_xml: Path | None = None) -> dict:
    """Produce `out_dir` from the recipe's source, atomically (a failure leaves the previous demos untouched)."""
    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    cfg = recipe.demos
    try:
        if cfg.source == "sim":
            if workcell_xml is None or not Path(workcell_xml).is_file():
                raise DemoInputError("demos.source is 'sim' but there is no compiled workcell: materialize "
                                     "sim_workcell first")
            result = record_sim_demos(recipe, Path(workcell_xml), staging)
        elif cfg.source == "local":
            if not cfg.local_path:
                raise DemoInputError("demos.source is 'local' but demos.local_path is empty")
            result = import_local(Path(cfg.local_path).expanduser(), staging, cfg.state_only)
        else:
            result = download_hub(cfg.repo_id, staging)
            if cfg.state_only:
                converted = staging_dir(staging)
                result |= write_state_only(DemoData.load(staging), converted)
                replace_dir(converted, staging)
        write_config(staging, {"demos": cfg.model_dump(mode="json"), "expert": recipe.expert.model_dump(mode="json"),
                               "merged_batches": []})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out_dir)
    return result


class MergeRefused(DemoInputError):
    """The merged dataset failed its verification; the demos were left as they were."""


def merge_into(demos_root: Path, batch_root: Path, progress: bool = False) -> dict:
    """Append a batch dataset to the demos with lerobot's own merge tool, publishing the merge only once it is
    verified (`verify_merged`): on any failure the staging copy is removed and `demos_root` is not touched."""
    from lerobot.datasets.dataset_tools import merge_datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.video_utils import _default_decoder_cache

    demos_root, batch_root = Path(demos_root), Path(batch_root)
    current, batch = DemoData.load(demos_root), DemoData.load(batch_root)
    staging = staging_dir(demos_root)
    try:
        merge_datasets([LeRobotDataset(DEMOS_REPO_ID, root=demos_root), LeRobotDataset(DEMOS_REPO_ID, root=batch_root)],
                       output_repo_id=DEMOS_REPO_ID, output_dir=staging)
        problems = verify_merged(staging, current, batch, progress=progress)
        if problems:
            raise MergeRefused("the merged dataset does not hold both datasets intact: " + "; ".join(problems[:10]))
        config_path = demos_root / CONFIG_FILE  # the settings the demos were built with, and every batch merged since
        config = json.loads(config_path.read_text()) if config_path.is_file() else {"merged_batches": []}
        config["merged_batches"] = [*config.get("merged_batches", []), batch_root.name]
        write_config(staging, config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        # lerobot keeps one open video decoder per file path for the whole process: drop those of the staging copy,
        # and those of the old demos, whose paths the merged videos are about to take (later reads would decode the
        # old, shorter files).
        _default_decoder_cache.clear()
    replace_dir(staging, demos_root)
    return {"episodes_before": current.meta.total_episodes, "episodes_added": batch.meta.total_episodes,
            "episodes_after": current.meta.total_episodes + batch.meta.total_episodes}


def verify_merged(merged_root: Path, current: DemoData, batch: DemoData, progress: bool = False) -> list[str]:
    """What is wrong with `merged_root` as `current` followed by `batch`: episode and frame counts are the sums, every
    episode keeps its length, the batch's rows arrive unchanged, every frame of the new episodes decodes at its
    timestamp and the first and last frame of every old episode still does."""
    from pipeline.demos.checks import JOINT_FEATURES, check_video_frames, check_videos

    merged = DemoData.load(merged_root)
    n_old, n_new = current.meta.total_episodes, batch.meta.total_episodes
    problems = []
    if merged.meta.total_episodes != n_old + n_new:
        problems.append(f"{merged.meta.total_episodes} episodes, expected {n_old} + {n_new}")
    if merged.meta.total_frames != current.meta.total_frames + batch.meta.total_frames or \
            len(merged.frames) != len(current.frames) + len(batch.frames):
        problems.append(f"{merged.meta.total_frames} frames ({len(merged.frames)} rows), expected "
                        f"{current.meta.total_frames} + {batch.meta.total_frames}")
    lengths = {ep: len(g) for ep, g in merged.episodes()}
    sources = [(ep, g) for ep, g in current.episodes()] + [(n_old + ep, g) for ep, g in batch.episodes()]
    merged_groups = dict(merged.episodes())
    for ep, g in sources:
        if lengths.get(ep) != len(g):
            problems.append(f"episode {ep}: {lengths.get(ep, 0)} frames after the merge, {len(g)} before")
        elif ep >= n_old:
            for key in JOINT_FEATURES:
                if key in g and not np.array_equal(merged.joints(merged_groups[ep], key), batch.joints(g, key)):
                    problems.append(f"episode {ep}: '{key}' differs from batch episode {ep - n_old}")
    new_episodes = range(n_old, n_old + n_new)
    for outcome in (check_video_frames(merged, new_episodes, progress=progress), check_videos(merged, range(n_old))):
        if not outcome.passed:
            problems.append(outcome.message)
    return problems


def summarize(root: Path) -> dict:
    data = DemoData.load(root)
    actions = np.stack(data.frames["action"].to_numpy())
    return {
        "episodes": int(data.meta.total_episodes),
        "frames": int(data.meta.total_frames),
        "fps": int(data.meta.fps),
        "tasks": [str(t) for t in data.meta.tasks.index],
        "cameras": data.camera_keys,
        "robot_type": data.meta.robot_type,
        "action_range": {name: [round(float(lo), 2), round(float(hi), 2)]
                         for name, lo, hi in zip(LEROBOT_JOINT_NAMES, actions.min(0), actions.max(0))},
    }


def contact_sheet(root: Path, out_png: Path, max_episodes: int = 4, thumb_width: int = 240) -> Path | None:
    """First, middle and last frame of up to `max_episodes` episodes for every camera, as one PNG."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from PIL import Image

    dataset = LeRobotDataset(DEMOS_REPO_ID, root=root)
    cams = dataset.meta.camera_keys
    if not cams:
        return None
    rows = []
    for ep in range(min(max_episodes, dataset.meta.total_episodes)):
        start = int(dataset.meta.episodes[ep]["dataset_from_index"])
        stop = int(dataset.meta.episodes[ep]["dataset_to_index"]) - 1
        tiles = []
        for idx in (start, (start + stop) // 2, stop):
            item = dataset[idx]
            for cam in cams:
                img = (item[cam].permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
                tile = Image.fromarray(img)
                tile.thumbnail((thumb_width, thumb_width))
                tiles.append(np.asarray(tile))
        rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_png)
    return out_png
