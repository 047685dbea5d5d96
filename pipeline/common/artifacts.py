"""Small helpers for artifact folders: md5s, writing them safely, resumable work folders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


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
