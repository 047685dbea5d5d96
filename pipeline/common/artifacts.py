"""Small helpers for artifact folders: md5s, writing them safely, resumable work folders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from pipeline.common.layout import CONFIG_FILE


def file_md5(path: Path) -> str:
    """md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def staging_dir(target: Path) -> Path:
    """A fresh sibling folder to build `target` in; see `replace_dir`."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def replace_dir(new: Path, target: Path) -> None:
    """Swap a completely built folder in for `target`, so a failed build never leaves `target` half-written."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def remove_other_runs(keep: Path) -> None:
    """Delete the siblings of the work folder `keep`: checkpoints of another recipe or other inputs can never be
    resumed by this one, so they only hold disk."""
    for other in keep.parent.iterdir() if keep.parent.is_dir() else []:
        if other.is_dir() and other != keep:
            shutil.rmtree(other, ignore_errors=True)


def keep_log_until(log_path: Path, step: int, key: str = "step") -> None:
    """Drop the JSON-lines records past `step` (an interrupted run logged them after its last checkpoint; resuming
    trains and logs those steps again)."""
    lines = log_path.read_text().splitlines() if log_path.is_file() else []
    kept = [line for line in lines if line and json.loads(line)[key] <= step]
    log_path.write_text("".join(line + "\n" for line in kept))


# Wall-clock figures differ on every run and every machine: they are reported (Dagster metadata, the CLI's output)
# but never written into an artifact, whose md5 must depend only on its inputs.
_TIMING_SUFFIXES = ("_seconds", "_per_s", "seconds_wall")


def is_timing(key: str) -> bool:
    return key == "seconds" or key.endswith(_TIMING_SUFFIXES)


def split_timings(metrics: dict) -> tuple[dict, dict]:
    """(the figures about the result, the wall-clock figures), nested dicts split alike."""
    kept, timings = {}, {}
    for key, value in metrics.items():
        if is_timing(key):
            timings[key] = value
        elif isinstance(value, dict):
            kept[key], inner = split_timings(value)
            if inner:
                timings[key] = inner
        else:
            kept[key] = value
    return kept, timings


def write_metrics(folder: Path, metrics: dict) -> dict:
    """`metrics.json` without the wall-clock figures; returns those."""
    kept, timings = split_timings(metrics)
    (Path(folder) / "metrics.json").write_text(json.dumps(kept, indent=2))
    return timings


def write_config(folder: Path, config: dict) -> None:
    """`config.json`: the settings a stage ran with (its recipe section, the md5s of its inputs), beside its outputs,
    one name for every stage (as lerobot saves the config next to every checkpoint)."""
    (Path(folder) / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def portable(path: Path | str, root: Path | str) -> str:
    """`path` relative to the project `root` (POSIX), so an artifact holds no machine's checkout path; a path
    outside the project stays as given."""
    path, root = Path(path), Path(root)
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def copy_log_without_timings(source: Path, target: Path) -> None:
    """Copy a JSON-lines training log into an artifact, each record without its wall-clock fields (the run's own
    log in `runs/` keeps them)."""
    lines = [json.loads(line) for line in Path(source).read_text().splitlines() if line.strip()]
    Path(target).write_text("".join(json.dumps(split_timings(row)[0]) + "\n" for row in lines))


def with_timings(metrics: dict, timings: dict) -> dict:
    """The inverse of `split_timings`: the figures and the wall-clock figures merged back, nested dicts alike."""
    merged = dict(metrics)
    for key, value in timings.items():
        merged[key] = with_timings(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def read_timings(path: Path) -> dict:
    """Wall-clock figures a child process left in its work folder ({} when it left none)."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}
