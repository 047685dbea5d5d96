"""Small helpers for writing artifact folders safely."""

from __future__ import annotations

import shutil
from pathlib import Path


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
