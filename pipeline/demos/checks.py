"""Quality checks of a LeRobot v3.0 demonstration dataset — the door every demo batch passes through.

Blocking (a failure stops everything downstream): schema, timing, finite values, joint limits, videos, episode count.
Warnings: idle episodes, state lagging the action, near-duplicate episodes. Every message names the episode, frame
and feature at fault. Metadata is read with lerobot's `LeRobotDatasetMetadata`, frames with lerobot's own parquet
loader — never the raw file layout — so a dataset with missing videos can still be diagnosed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.demos.config import DemoChecksConfig
from pipeline.workcell.joints import LEROBOT_HI, LEROBOT_JOINT_NAMES, LEROBOT_LO

JOINT_FEATURES = ("observation.state", "action")
#: (name, blocking) of every check `run_checks` performs, in order; the Dagster check specs are built from it.
CHECK_SPECS = (("schema", True), ("timing", True), ("finite_values", True), ("joint_limits", True), ("videos", True),
               ("min_episodes", True), ("idle_episodes", False), ("state_action_lag", False), ("near_duplicates", False))


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    message: str
    details: dict = field(default_factory=dict)


@dataclass
class DemoData:
    """A dataset's metadata plus its tabular frames, loaded once for all checks."""

    root: Path
    meta: object  # lerobot LeRobotDatasetMetadata
    frames: object  # pandas DataFrame of every frame
    camera_keys: list[str]

    @classmethod
    def load(cls, root: str | Path) -> "DemoData":
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata
        from lerobot.datasets.io_utils import load_nested_dataset

        root = Path(root)
        if not (root / "meta" / "info.json").is_file():
            raise FileNotFoundError(f"{root} is not a LeRobot dataset (no meta/info.json)")
        meta = LeRobotDatasetMetadata(repo_id=f"local/{root.name}", root=root)
        frames = load_nested_dataset(root / "data").to_pandas()
        cams = [k for k, f in meta.features.items() if f["dtype"] in ("video", "image")]
        return cls(root, meta, frames, cams)

    def episodes(self):
        """(episode_index, frames of that episode sorted by frame_index)."""
        for ep, group in self.frames.groupby("episode_index", sort=True):
            yield int(ep), group.sort_values("frame_index")

    def joints(self, group, key: str) -> np.ndarray:
        return np.stack(group[key].to_numpy()).astype(np.float64)

    @property
    def video_keys(self) -> list[str]:
        return [k for k in self.camera_keys if self.meta.features[k]["dtype"] == "video"]

    def video_path(self, episode: int, key: str) -> Path:
        return self.root / self.meta.get_video_file_path(episode, key)

    def missing_videos(self) -> dict[str, list[int]]:
        """Camera key -> episodes whose declared video file is absent."""
        missing: dict[str, list[int]] = {}
        for key in self.video_keys:
            for ep in range(self.meta.total_episodes):
                if not self.video_path(ep, key).is_file():
                    missing.setdefault(key, []).append(ep)
        return missing


def run_checks(data: DemoData, cfg: DemoChecksConfig, *, require_camera: bool = True) -> list[CheckOutcome]:
    blocking = [
        check_schema(data, require_camera),
        check_timing(data, cfg),
        check_finite(data),
        check_joint_limits(data),
        check_videos(data),
        check_min_episodes(data, cfg),
    ]
    if not blocking[0].passed:  # without the expected features the other checks cannot read the data
        return blocking
    warnings = [check_idle(data, cfg), check_lag(data, cfg), check_duplicates(data, cfg)]
    return blocking + warnings


def failures(outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    return [o for o in outcomes if o.blocking and not o.passed]


# --- blocking ---------------------------------------------------------------------------------------------------
def check_schema(data: DemoData, require_camera: bool) -> CheckOutcome:
    problems = []
    feats = data.meta.features
    for key in JOINT_FEATURES:
        f = feats.get(key)
        if f is None:
            problems.append(f"feature '{key}' is missing")
            continue
        if tuple(f.get("shape", ())) != (6,):
            problems.append(f"feature '{key}' has shape {tuple(f.get('shape', ()))}, expected (6,)")
        names = f.get("names")
        if isinstance(names, dict):  # older layouts nest the names under "motors"
            names = next(iter(names.values()), None)
        if list(names or []) != list(LEROBOT_JOINT_NAMES):
            problems.append(f"feature '{key}' names {names} are not the SO-101 joints {list(LEROBOT_JOINT_NAMES)}")
    if require_camera and not data.camera_keys:
        problems.append("no camera feature (observation.images.*); set demos.state_only to accept state/action data")
    return _outcome("schema", True, problems, "6-D observation.state and action with SO-101 names"
                    + (", ≥ 1 camera" if require_camera else ""))


def check_timing(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    fps = data.meta.fps
    problems = []
    for ep, g in data.episodes():
        idx = g["frame_index"].to_numpy()
        if len(idx) and not np.array_equal(idx, np.arange(len(idx))):
            bad = int(np.argmax(idx != np.arange(len(idx))))
            problems.append(f"episode {ep}: frame_index jumps at frame {bad}")
        ts = g["timestamp"].to_numpy(dtype=np.float64)
        expected = idx / fps
        off = np.abs(ts - expected)
        if len(off) and off.max() > cfg.timestamp_tolerance_s:
            bad = int(np.argmax(off > cfg.timestamp_tolerance_s))
            problems.append(f"episode {ep} frame {bad}: timestamp {ts[bad]:.4f} s, expected {expected[bad]:.4f} s "
                            f"at {fps} fps")
    return _outcome("timing", True, problems, f"timestamps match {fps} fps in every episode")


def check_finite(data: DemoData) -> CheckOutcome:
    problems = []
    for ep, g in data.episodes():
        for key in JOINT_FEATURES:
            values = data.joints(g, key)
            bad = ~np.isfinite(values)
            if bad.any():
                frame, joint = map(int, np.argwhere(bad)[0])
                problems.append(f"episode {ep} frame {frame}: {key}[{LEROBOT_JOINT_NAMES[joint]}] = {values[frame, joint]}")
    return _outcome("finite_values", True, problems, "no NaN/inf in observation.state or action")


def check_joint_limits(data: DemoData) -> CheckOutcome:
    problems = []
    for ep, g in data.episodes():
        actions = data.joints(g, "action")
        with np.errstate(invalid="ignore"):
            out = (actions < LEROBOT_LO - 1e-3) | (actions > LEROBOT_HI + 1e-3)
        if out.any():
            frame, joint = map(int, np.argwhere(out)[0])
            problems.append(f"episode {ep} frame {frame}: action {LEROBOT_JOINT_NAMES[joint]} = "
                            f"{actions[frame, joint]:.2f} outside [{LEROBOT_LO[joint]:.0f}, {LEROBOT_HI[joint]:.0f}]")
    return _outcome("joint_limits", True, problems, "every action inside the SO-101 joint range")


def check_videos(data: DemoData) -> CheckOutcome:
    """Every declared video file exists and decodes at the first and last frame of every episode."""
    from lerobot.datasets.video_utils import decode_video_frames

    missing = data.missing_videos()
    problems = [f"episode {ep}: video '{key}' missing ({data.video_path(ep, key).relative_to(data.root)})"
                for key, episodes in missing.items() for ep in episodes]
    for key in data.video_keys:
        for ep, g in data.episodes():
            if ep in missing.get(key, []):
                continue
            path = data.video_path(ep, key)
            start = float(data.meta.episodes[ep][f"videos/{key}/from_timestamp"])
            last = start + float(g["timestamp"].iloc[-1])
            try:
                frames = decode_video_frames(path, [start, last], tolerance_s=1.5 / data.meta.fps)
                if frames.shape[0] != 2:
                    raise ValueError(f"decoded {frames.shape[0]} of 2 frames")
            except Exception as exc:  # any decoder error is the finding
                problems.append(f"episode {ep}: video '{key}' not decodable ({path.name}: {exc})")
    summary = f"videos missing for {sorted(missing)}; " if missing else ""
    return _outcome("videos", True, problems, f"{len(data.video_keys)} camera video(s) present and decodable",
                    prefix=summary)


def check_min_episodes(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    n = data.meta.total_episodes
    problems = [] if n >= cfg.min_episodes else [f"{n} episodes, at least {cfg.min_episodes} required"]
    return _outcome("min_episodes", True, problems, f"{n} episodes ≥ {cfg.min_episodes}")


# --- warnings ---------------------------------------------------------------------------------------------------
def check_idle(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    problems = []
    for ep, g in data.episodes():
        arm = data.joints(g, "action")[:, :5]
        span = np.nanmax(arm, axis=0) - np.nanmin(arm, axis=0)
        if np.all(span < cfg.idle_range_units):
            problems.append(f"episode {ep}: the arm barely moves (largest action range {span.max():.2f} units)")
    return _outcome("idle_episodes", False, problems, "every episode moves the arm")


def check_lag(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    """How many frames the measured state trails the commanded action (best-aligning shift, per episode)."""
    problems, lags = [], {}
    for ep, g in data.episodes():
        action, state = data.joints(g, "action")[:, :5], data.joints(g, "observation.state")[:, :5]
        n = len(action)
        if n < 10 or not np.isfinite(action).all() or not np.isfinite(state).all():
            continue
        errors = [np.mean((state[k:] - action[: n - k]) ** 2) for k in range(min(20, n // 2))]
        lag = int(np.argmin(errors))
        lags[ep] = lag
        if lag > cfg.max_lag_frames:
            problems.append(f"episode {ep}: observation.state trails action by {lag} frames")
    return _outcome("state_action_lag", False, problems, "state follows action promptly", details={"lag_frames": lags})


def check_duplicates(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    resampled = {}
    for ep, g in data.episodes():
        a = data.joints(g, "action")
        t = np.linspace(0, len(a) - 1, 50)
        resampled[ep] = np.stack([np.interp(t, np.arange(len(a)), a[:, j]) for j in range(6)], axis=1)
    problems = []
    eps = sorted(resampled)
    for i, a in enumerate(eps):
        for b in eps[i + 1:]:
            dist = float(np.nanmean(np.abs(resampled[a] - resampled[b])))
            if dist < cfg.duplicate_distance_units:
                problems.append(f"episodes {a} and {b} are near-duplicates (mean |Δaction| {dist:.3f} units)")
    return _outcome("near_duplicates", False, problems, "no two episodes repeat each other")


def _outcome(name: str, blocking: bool, problems: list[str], ok_message: str, prefix: str = "",
             details: dict | None = None) -> CheckOutcome:
    shown = problems[:10] + ([f"… and {len(problems) - 10} more"] if len(problems) > 10 else [])
    message = ok_message if not problems else prefix + "; ".join(shown)
    return CheckOutcome(name, not problems, blocking, message, {"problems": len(problems), **(details or {})})
