"""The demo inbox: new LeRobot datasets dropped into `data/inbox/<batch>/` are screened, then merged into
`data/demos` or quarantined in `data/inbox/rejected/<batch>/` with a REJECTED.txt saying why.

A batch is refused before it is read when it is (or contains) a symlink or resolves outside the inbox. Screening
runs every check (every video frame decoded included) and the comparison with `data/demos`, and reports every
reason at once; it never raises on bad input: whatever cannot be read is a reason. The merge is verified in staging
before it replaces `data/demos` (stage.merge_into), so a refused merge leaves `data/demos` byte-identical.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipeline.common.recipe import Recipe
from pipeline.demos.checks import DemoData, compatibility_problems, reasons, run_checks
from pipeline.demos.stage import DemoInputError, merge_into

RESERVED = ("rejected", "accepted")


class BatchRejected(RuntimeError):
    """The batch was quarantined; the message holds the reasons."""


def pending_batches(inbox: Path, settled_for_s: float = 0.0) -> list[str]:
    """Batch folders waiting in the inbox; with `settled_for_s`, only those nothing was written to for that long
    (a batch still being copied is not a bad batch)."""
    inbox = Path(inbox)
    if not inbox.is_dir():
        return []
    now = time.time()
    names = []
    for p in sorted(inbox.iterdir()):
        if p.name in RESERVED or p.name.startswith(".") or not (p.is_dir() or p.is_symlink()):
            continue
        if settled_for_s and not p.is_symlink():
            newest = max([f.lstat().st_mtime for f in p.rglob("*")] + [p.lstat().st_mtime])
            if now - newest < settled_for_s:
                continue
        names.append(p.name)
    return names


def plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..", *RESERVED)


def path_problem(inbox: Path, name: str) -> str | None:
    """Why `name` may not be read as a batch, or None."""
    if not plain_name(name):
        return f"batch name {name!r} is not a plain folder name inside the inbox"
    batch = Path(inbox) / name
    if batch.is_symlink():
        return f"{name} is a symlink ({batch.readlink()}); copy the dataset into the inbox instead"
    root = Path(inbox).resolve()
    for path in [batch, *batch.rglob("*")]:
        if path.is_symlink():
            return f"{path.relative_to(inbox)} is a symlink; a batch must hold real files only"
        if root not in path.resolve().parents:
            return f"{path} resolves outside the inbox"
    return None


def ingest_batch(inbox: Path, name: str, demos_root: Path, recipe: Recipe, progress: bool = False) -> dict:
    """Screen batch `name`; merge it into `demos_root` (lerobot's merge, verified before it is published) or
    quarantine it and raise BatchRejected."""
    inbox = Path(inbox)
    if not Path(demos_root, "meta", "info.json").is_file():  # not the batch's fault: leave it in the inbox
        raise DemoInputError(f"there are no demos at {demos_root} to merge batch {name!r} into: materialize demos "
                             "first")
    found: list[str] = []
    problem = path_problem(inbox, name)
    if problem:
        found.append(problem)
    elif not (inbox / name).exists():
        raise FileNotFoundError(f"no batch {name!r} in {inbox}")
    else:
        found += screen_batch(inbox / name, demos_root, recipe, progress=progress)
    if not found:
        try:
            result = merge_into(demos_root, inbox / name, progress=progress)
        except Exception as exc:  # the merge or its verification failed: data/demos was not replaced
            found.append(f"merge: {type(exc).__name__}: {exc}")
    if found:
        where = quarantine(inbox, name, found) if plain_name(name) else None  # never move what is not a batch
        raise BatchRejected(f"batch {name!r} rejected" + (f" (moved to {where})" if where else "") + ": "
                            + "; ".join(found))
    accepted = inbox / "accepted" / _unique(inbox / "accepted", name)
    accepted.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(inbox / name), accepted)
    return {"batch": name, **result}


def screen_batch(batch: Path, demos_root: Path, recipe: Recipe, progress: bool = False) -> list[str]:
    """Every reason `batch` may not join `demos_root`: the dataset checks and the comparison with the demos, all
    reported together. Never raises: an error while reading or checking is itself a reason."""
    try:
        data = DemoData.load(batch)
    except Exception as exc:  # unreadable is a reason, not a crash
        return [f"not a readable LeRobot dataset: {type(exc).__name__}: {exc}"]
    found = []
    try:
        found += [f"compatibility: {p}" for p in compatibility_problems(data, DemoData.load(demos_root))]
    except Exception as exc:
        found.append(f"compatibility: could not compare with {demos_root}: {type(exc).__name__}: {exc}")
    try:
        checks = recipe.demos.checks.model_copy(update={"min_episodes": 1})  # a batch may be small
        found += reasons(run_checks(data, checks, require_camera=not recipe.demos.state_only, progress=progress))
    except Exception as exc:
        found.append(f"checks: could not run: {type(exc).__name__}: {exc}")
    return found


def quarantine(inbox: Path, name: str, reasons: list[str]) -> Path:
    rejected = Path(inbox) / "rejected"
    rejected.mkdir(parents=True, exist_ok=True)
    dest = rejected / _unique(rejected, name)
    source = Path(inbox) / name
    if source.is_symlink():  # keep the link itself (never its target) inside a folder of its own
        dest.mkdir()
        shutil.move(str(source), dest / name)
    else:
        shutil.move(str(source), dest)
    (dest / "REJECTED.txt").write_text(f"Rejected {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n" + "\n".join(f"- {r}" for r in reasons) + "\n")
    return dest


def _unique(folder: Path, name: str) -> str:
    return name if not (folder / name).exists() else f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
