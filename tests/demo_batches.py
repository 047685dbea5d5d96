"""Demo batches as they arrive damaged or from other rigs, made with lerobot's own writer (tests/stages/demos,
tests/orchestration)."""

import hashlib
from pathlib import Path

import numpy as np


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> md5 of every file under `root` (byte-identical trees have equal digests)."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def damage_mid_episode(root: Path, camera: str, episode: int = 0, nbytes: int = 4000, seed: int = 0) -> Path:
    """Overwrite `nbytes` of `camera`'s video with random bytes in the middle of `episode`'s span of the file (the
    first and last frame of every episode stay readable)."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata("local/batch", root=root)
    key = f"observation.images.{camera}"
    row = meta.episodes[episode]
    path = root / meta.get_video_file_path(episode, key)
    duration = max(float(meta.episodes[e][f"videos/{key}/to_timestamp"]) for e in range(meta.total_episodes)
                   if meta.get_video_file_path(e, key) == meta.get_video_file_path(episode, key))
    middle = (float(row[f"videos/{key}/from_timestamp"]) + float(row[f"videos/{key}/to_timestamp"])) / 2 / duration
    data = bytearray(path.read_bytes())
    at = int(len(data) * middle)
    data[at:at + nbytes] = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def rewrite_dataset(src: Path, out: Path, *, fps: int | None = None, cameras: dict[str, str] | None = None,
                    edit=None) -> Path:
    """`src` written anew with lerobot's writer as another rig would have recorded it: at `fps` (every n-th frame
    kept), with cameras renamed (`{"front": "top"}`), and `edit(episode, frame_index, frame_dict)` applied."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    source = LeRobotDataset("local/src", root=src)
    fps = fps or source.fps
    step = source.fps // fps
    cameras = cameras or {}
    rename = {f"observation.images.{a}": f"observation.images.{b}" for a, b in cameras.items()}
    features = {rename.get(k, k): {kk: vv for kk, vv in f.items() if kk != "info"}
                for k, f in source.meta.features.items()
                if k not in ("timestamp", "frame_index", "episode_index", "index", "task_index")}
    dataset = LeRobotDataset.create(repo_id="local/other-rig", fps=fps, root=out, robot_type=source.meta.robot_type,
                                    features=features, use_videos=True)
    source_key = {new: old for old, new in rename.items()}
    for ep in range(source.meta.total_episodes):
        start = int(source.meta.episodes[ep]["dataset_from_index"])
        stop = int(source.meta.episodes[ep]["dataset_to_index"])
        for n, idx in enumerate(range(start, stop, step)):
            item = source[idx]
            frame = {"task": item["task"]}
            for key in features:
                value = item[source_key.get(key, key)].numpy()
                if key.startswith("observation.images."):
                    value = (value.transpose(1, 2, 0) * 255).round().astype(np.uint8)
                frame[key] = value
            if edit:
                edit(ep, n, frame)
            dataset.add_frame(frame)
        dataset.save_episode()
    dataset.finalize()
    return out
