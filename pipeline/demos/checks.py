"""Quality checks of a LeRobot v3.0 demonstration dataset — the door every demo batch passes through.

Blocking (a failure stops everything downstream): schema, episode table (meta/episodes matches the rows), timing,
finite values, joint limits, videos (files present, first and last frame of each episode decode with lerobot's
decoder), video frames (every frame of every camera decodes and matches its parquet timestamp: frames.py), episode
count. Warnings: idle episodes, state lagging the action, near-duplicate episodes. Every message names the episode,
frame and feature at fault. Metadata is read with lerobot's `LeRobotDatasetMetadata`, frames with lerobot's own
parquet loader — never the raw file layout — so a dataset with missing videos can still be diagnosed. A check never raises: what it could not read is its finding,
and a check that needs a feature the dataset lacks says so (the schema check names the feature).

`compatibility_problems` compares a batch with the dataset it would be merged into (fps, robot type, cameras,
features, video encoding); the inbox reports it together with every check's findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.demos.config import DemoChecksConfig
from pipeline.workcell.joints import LEROBOT_HI, LEROBOT_JOINT_NAMES, LEROBOT_LO

JOINT_FEATURES = ("observation.state", "action")
#: (name, blocking) of every check `run_checks` performs, in order; the Dagster check specs are built from it.
CHECK_SPECS = (("schema", True), ("episode_table", True), ("timing", True), ("finite_values", True),
               ("joint_limits", True), ("videos", True), ("video_frames", True), ("min_episodes", True),
               ("idle_episodes", False), ("state_action_lag", False), ("near_duplicates", False))


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    message: str
    details: dict = field(default_factory=dict)
    skipped: bool = False  # not run: a feature it needs is missing (the schema check names it)


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


def run_checks(data: DemoData, cfg: DemoChecksConfig, *, require_camera: bool = True,
               progress: bool = False) -> list[CheckOutcome]:
    """Every check of CHECK_SPECS, in its order; each one runs whatever the others found."""
    checks = {
        "schema": lambda: check_schema(data, require_camera),
        "episode_table": lambda: check_episode_table(data),
        "timing": lambda: check_timing(data, cfg),
        "finite_values": lambda: check_finite(data),
        "joint_limits": lambda: check_joint_limits(data),
        "videos": lambda: check_videos(data),
        "video_frames": lambda: check_video_frames(data, progress=progress),
        "min_episodes": lambda: check_min_episodes(data, cfg),
        "idle_episodes": lambda: check_idle(data, cfg),
        "state_action_lag": lambda: check_lag(data, cfg),
        "near_duplicates": lambda: check_duplicates(data, cfg),
    }
    outcomes = []
    for name, blocking in CHECK_SPECS:
        try:
            outcomes.append(checks[name]())
        except Exception as exc:  # a check that cannot read the data has found a problem, not a reason to stop
            outcomes.append(CheckOutcome(name, False, blocking, f"could not run: {type(exc).__name__}: {exc}",
                                         {"problems": 1}))
    return outcomes


def failures(outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    return [o for o in outcomes if o.blocking and not o.passed]


def reasons(outcomes: list[CheckOutcome]) -> list[str]:
    """One line per failed blocking check; checks skipped for a missing feature are left to the schema's line."""
    failed = failures(outcomes)
    schema_failed = any(o.name == "schema" for o in failed)
    return [f"{o.name}: {o.message}" for o in failed if not (o.skipped and schema_failed)]


def _skipped(name: str, blocking: bool, missing: list[str]) -> CheckOutcome:
    return CheckOutcome(name, False, blocking, f"not run: feature {', '.join(map(repr, missing))} missing (see schema)",
                        {"problems": 1}, skipped=True)


def _missing(data: DemoData, *keys: str) -> list[str]:
    return [k for k in keys if k not in data.meta.features or k not in data.frames.columns]


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


def check_episode_table(data: DemoData) -> CheckOutcome:
    """meta/episodes and meta/info.json describe the rows in data/: the same episodes, each as long as its rows, at
    its rows' global indices (a data file lost or a table edited by hand breaks every reader's indexing)."""
    table = data.meta.episodes
    problems = []
    listed = [int(e) for e in table["episode_index"]] if table is not None else []
    if listed != list(range(len(listed))):
        problems.append(f"meta/episodes lists episodes {listed[:10]}{'…' if len(listed) > 10 else ''}, not 0…"
                        f"{len(listed) - 1} in order")
    if data.meta.total_episodes != len(listed):
        problems.append(f"meta/info.json total_episodes {data.meta.total_episodes}, meta/episodes has {len(listed)}")
    if data.meta.total_frames != len(data.frames):
        problems.append(f"meta/info.json total_frames {data.meta.total_frames}, data/ has {len(data.frames)} rows")
    rows = {ep: g for ep, g in data.episodes()}
    for pos, ep in enumerate(listed):
        if ep not in rows:
            problems.append(f"episode {ep}: in meta/episodes, no rows in data/ (a data file missing?)")
            continue
        g, length = rows[ep], int(table[pos]["length"])
        start, stop = int(table[pos]["dataset_from_index"]), int(table[pos]["dataset_to_index"])
        if len(g) != length:
            problems.append(f"episode {ep}: {len(g)} rows in data/, meta/episodes says {length}")
        elif "index" in g and (int(g["index"].min()) != start or int(g["index"].max()) + 1 != stop):
            problems.append(f"episode {ep}: rows at index {int(g['index'].min())}…{int(g['index'].max())}, "
                            f"meta/episodes says {start}…{stop - 1}")
    problems += [f"episode {ep}: rows in data/, not in meta/episodes" for ep in sorted(set(rows) - set(listed))]
    return _outcome("episode_table", True, problems, f"meta/episodes matches the {len(data.frames)} rows of "
                    f"{len(listed)} episodes")


def check_timing(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    fps = data.meta.fps
    if not isinstance(fps, (int, float)) or fps <= 0:
        return _outcome("timing", True, [f"meta/info.json fps is {fps!r}, not a positive number"], "")
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
    present = [k for k in JOINT_FEATURES if not _missing(data, k)]
    if not present:
        return _skipped("finite_values", True, list(JOINT_FEATURES))
    problems = []
    for ep, g in data.episodes():
        for key in present:
            values = data.joints(g, key)
            bad = ~np.isfinite(values)
            if bad.any():
                frame, joint = map(int, np.argwhere(bad)[0])
                problems.append(f"episode {ep} frame {frame}: {key}[{LEROBOT_JOINT_NAMES[joint]}] = {values[frame, joint]}")
    return _outcome("finite_values", True, problems, f"no NaN/inf in {' or '.join(present)}")


def check_joint_limits(data: DemoData) -> CheckOutcome:
    if _missing(data, "action"):
        return _skipped("joint_limits", True, ["action"])
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


def check_videos(data: DemoData, episodes=None) -> CheckOutcome:
    """Every declared video file exists and decodes, with lerobot's decoder, at the first and last frame of every
    episode (or of those in `episodes`)."""
    from lerobot.datasets.video_utils import decode_video_frames

    wanted = None if episodes is None else set(episodes)
    missing = data.missing_videos()
    problems = [f"episode {ep}: video '{key}' missing ({data.video_path(ep, key).relative_to(data.root)})"
                for key, eps in missing.items() for ep in eps if wanted is None or ep in wanted]
    for key in data.video_keys:
        for ep, g in data.episodes():
            if ep in missing.get(key, []) or (wanted is not None and ep not in wanted):
                continue
            try:
                path = data.video_path(ep, key)
                start = float(data.meta.episodes[ep][f"videos/{key}/from_timestamp"])
                last = start + float(g["timestamp"].iloc[-1])
                frames = decode_video_frames(path, [start, last], tolerance_s=1.5 / data.meta.fps)
                if frames.shape[0] != 2:
                    raise ValueError(f"decoded {frames.shape[0]} of 2 frames")
            except Exception as exc:  # any decoder error is the finding
                problems.append(f"episode {ep}: video '{key}' first/last frame not decodable ({first_line(exc)})")
    summary = f"videos missing for {sorted(missing)}; " if missing else ""
    return _outcome("videos", True, problems, f"{len(data.video_keys)} camera video(s) present, first and last frame "
                    "of every episode decodable", prefix=summary)


def first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:limit]}"


def check_video_frames(data: DemoData, episodes=None, progress: bool = False) -> CheckOutcome:
    """Every frame of every camera decodes, one per parquet row, at the row's timestamp (frames.py)."""
    from pipeline.demos.frames import decode_every_frame

    problems = decode_every_frame(data, episodes, progress=progress)
    n = data.meta.total_frames if episodes is None else sum(len(g) for ep, g in data.episodes() if ep in set(episodes))
    return _outcome("video_frames", True, problems, f"all {n} frames × {len(data.video_keys)} camera(s) decode at "
                    "their parquet timestamps")


def check_min_episodes(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    n = data.meta.total_episodes
    problems = [] if n >= cfg.min_episodes else [f"{n} episodes, at least {cfg.min_episodes} required"]
    return _outcome("min_episodes", True, problems, f"{n} episodes ≥ {cfg.min_episodes}")


# --- a batch against the dataset it joins -----------------------------------------------------------------------
#: video encoding that a stream-copy merge needs identical (lerobot's merge concatenates without re-encoding)
VIDEO_STREAM_KEYS = ("video.codec", "video.pix_fmt", "video.height", "video.width")


def compatibility_problems(batch: DemoData, current: DemoData, current_name: str = "data/demos") -> list[str]:
    """Why `batch` cannot be merged into `current`: every difference, not only the first."""
    from lerobot.utils.constants import DEFAULT_FEATURES

    problems = []
    if batch.meta.fps != current.meta.fps:
        problems.append(f"fps {batch.meta.fps} differs from {current_name} ({current.meta.fps})")
    if batch.meta.robot_type != current.meta.robot_type:
        problems.append(f"robot_type {batch.meta.robot_type!r} differs from {current_name} "
                        f"({current.meta.robot_type!r})")
    cams_b, cams_c = set(batch.camera_keys), set(current.camera_keys)
    if cams_b != cams_c:
        problems.append(f"cameras differ from {current_name}: the batch has {sorted(cams_b)}, {current_name} has "
                        f"{sorted(cams_c)}" + (f" (missing {sorted(cams_c - cams_b)})" if cams_c - cams_b else "")
                        + (f" (unknown {sorted(cams_b - cams_c)})" if cams_b - cams_c else ""))
    fb, fc = batch.meta.features, current.meta.features
    for key in sorted((set(fb) | set(fc)) - set(DEFAULT_FEATURES) - (cams_b ^ cams_c)):
        a, b = fc.get(key), fb.get(key)
        if a is None or b is None:
            problems.append(f"feature '{key}' is {'only in the batch' if a is None else 'missing from the batch'}")
            continue
        for attr in ("dtype", "shape", "names"):
            va, vb = a.get(attr), b.get(attr)
            if attr == "shape":
                va, vb = tuple(va or ()), tuple(vb or ())
            if va != vb:
                problems.append(f"feature '{key}' {attr} {vb} differs from {current_name} ({va})")
        if a.get("dtype") == "video":
            ia, ib = a.get("info") or {}, b.get("info") or {}
            diff = [f"{k} {ib.get(k)} vs {ia.get(k)}" for k in VIDEO_STREAM_KEYS if ia.get(k) != ib.get(k)]
            if diff:
                problems.append(f"camera '{key}' is encoded differently from {current_name} ({', '.join(diff)})")
    return problems


# --- warnings ---------------------------------------------------------------------------------------------------
def check_idle(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    if _missing(data, "action"):
        return _skipped("idle_episodes", False, ["action"])
    problems = []
    for ep, g in data.episodes():
        arm = data.joints(g, "action")[:, :5]
        span = np.nanmax(arm, axis=0) - np.nanmin(arm, axis=0)
        if np.all(span < cfg.idle_range_units):
            problems.append(f"episode {ep}: the arm barely moves (largest action range {span.max():.2f} units)")
    return _outcome("idle_episodes", False, problems, "every episode moves the arm")


def check_lag(data: DemoData, cfg: DemoChecksConfig) -> CheckOutcome:
    """How many frames the measured state trails the commanded action (best-aligning shift, per episode)."""
    if _missing(data, *JOINT_FEATURES):
        return _skipped("state_action_lag", False, _missing(data, *JOINT_FEATURES))
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
    if _missing(data, "action"):
        return _skipped("near_duplicates", False, ["action"])
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
