"""Every video frame of a LeRobot v3.0 dataset, decoded and matched against its parquet rows.

Why a full decode: a few damaged kilobytes in the middle of an episode leave the first and last frame readable, and
lerobot's merge (a stream copy) then writes a video with frames missing, which shifts every later episode of that
file past its end. Decoding every frame before a batch is merged, and after the merge before it is published, keeps
such damage out of `data/demos`.

The decoder is FFmpeg's through PyAV (lerobot's `pyav` video backend and the library lerobot's merge writes with),
which stops on a corrupt packet; torchcodec (lerobot's training decoder) conceals some of the same damage silently.
One task per (episode, camera): each seeks to its episode's first keyframe, so the tasks run in parallel threads
(PyAV releases the GIL while decoding) and a finding names the episode, the camera and the frame.
Damage that still decodes to a picture (flipped bits inside a frame's payload) cannot be told from content: LeRobot
datasets carry no per-frame checksums.
"""

from __future__ import annotations

import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm


def lerobot_tolerance_s() -> float:
    """The timestamp tolerance `LeRobotDataset` reads frames with (a frame farther off is an error in training)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return float(inspect.signature(LeRobotDataset.__init__).parameters["tolerance_s"].default)


@dataclass(frozen=True)
class EpisodeVideo:
    """One camera's part of one episode: where it lies in its video file and which frames the parquet expects."""

    episode: int
    camera: str  # the feature key, e.g. observation.images.front
    path: Path
    from_s: float  # the episode's first frame in the file
    to_s: float  # the end of the episode's span in the file (the next episode starts here)
    expected_s: tuple[float, ...]  # the parquet timestamps of the episode's frames, from its start

    def where(self, frame: int | None = None) -> str:
        at = ""
        if frame is not None:
            at = f" frame {frame}" + (f" (t = {self.expected_s[frame]:.3f} s)" if frame < len(self.expected_s) else "")
        return f"episode {self.episode}{at}: video '{self.camera}' ({self.path.name})"


def episode_videos(data, episodes=None) -> list[EpisodeVideo]:
    """The decode tasks of `data` (a checks.DemoData), for every episode or only those in `episodes`."""
    wanted = None if episodes is None else set(int(e) for e in episodes)
    tasks = []
    for ep, group in data.episodes():
        if wanted is not None and ep not in wanted:
            continue
        row = data.meta.episodes[ep]
        expected = tuple(float(t) for t in group["timestamp"].to_numpy())
        for key in data.video_keys:
            tasks.append(EpisodeVideo(ep, key, data.video_path(ep, key), float(row[f"videos/{key}/from_timestamp"]),
                                      float(row[f"videos/{key}/to_timestamp"]), expected))
    return tasks


def decode_episode(task: EpisodeVideo, tolerance_s: float) -> str | None:
    """Decode every frame of `task`'s span; the first problem found, or None when every parquet row has its frame."""
    import av

    if not task.path.is_file():
        return f"{task.where()}: file missing"
    decoded: list[float] = []
    try:
        with av.open(str(task.path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # parallelism comes from the episode tasks
            time_base = float(stream.time_base)
            if task.from_s > 0:  # to the keyframe at or before the episode's first frame
                container.seek(int(max(task.from_s - tolerance_s, 0.0) / time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    return f"{task.where(len(decoded))}: a frame without a timestamp"
                t = frame.pts * time_base
                if t < task.from_s - tolerance_s:
                    continue  # before the episode (decoded from the keyframe on)
                if t >= task.to_s - tolerance_s:
                    break  # the next episode in this file
                decoded.append(t - task.from_s)
    except Exception as exc:  # a decoder or demuxer error is the finding
        text = (str(exc).strip().splitlines() or [""])[0][:240]
        return f"{task.where(len(decoded))} does not decode: {type(exc).__name__}: {text}"
    for i, (got, want) in enumerate(zip(decoded, task.expected_s)):
        if abs(got - want) > tolerance_s:
            return (f"{task.where(i)}: video timestamp {got:.4f} s, the parquet expects {want:.4f} s "
                    f"(tolerance {tolerance_s:g} s)")
    if len(decoded) != len(task.expected_s):
        first_missing = len(decoded)
        if len(decoded) < len(task.expected_s):
            return (f"{task.where(first_missing)}: only {len(decoded)} of {len(task.expected_s)} frames are in the "
                    f"video (frames {first_missing}–{len(task.expected_s) - 1} missing)")
        return f"{task.where()}: {len(decoded)} video frames for {len(task.expected_s)} parquet rows"
    return None


def decode_every_frame(data, episodes=None, workers: int | None = None, progress: bool = False,
                       tolerance_s: float | None = None) -> list[str]:
    """Problems found decoding every frame of every camera of `data` (only `episodes` if given), in episode order."""
    tasks = episode_videos(data, episodes)
    if not tasks:
        return []
    tolerance = lerobot_tolerance_s() if tolerance_s is None else tolerance_s
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    bar = tqdm(total=len(tasks), desc="decoding every video frame", unit="episode-camera", disable=not progress)
    with ThreadPoolExecutor(workers) as pool:
        results = []
        for result in pool.map(lambda t: decode_episode(t, tolerance), tasks):
            results.append(result)
            bar.update()
    bar.close()
    return [r for r in results if r]
