"""Lineage of any artifact: which dataset, recipe, code and upstream models produced it — read from `dvc.yaml` /
`dvc.lock` and verified against the files on disk (DVC's own hashing, `dvc status`).

    twinloop lineage reports/eval          # or an asset name (eval_report), or any file inside an output
    twinloop lineage models/bc --json

Exit status 0 when every link holds; 1 naming the first link that does not: an output or dependency that differs
from its dvc.lock md5, or a stage whose recorded input is not the md5 its upstream stage recorded (the upstream
was rebuilt after it).
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class LineageError(ValueError):
    """The target is not a stage or a tracked output, or the project has no dvc.yaml / dvc.lock."""


@dataclass
class Link:
    stage: str
    out: str
    md5: str | None
    files: int | None
    written: str | None  # the output folder's modification time on disk
    recorded_in_commit: str | None  # the git commit that added this md5 to dvc.lock (None: not committed yet)
    params: dict = field(default_factory=dict)
    code: dict = field(default_factory=dict)  # code dependency path -> md5
    inputs: dict = field(default_factory=dict)  # upstream output path -> md5 recorded when this stage ran
    extra: dict = field(default_factory=dict)  # e.g. the dataset's episode count


@dataclass
class Lineage:
    target: str
    stage: str
    links: list[Link]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"target": self.target, "stage": self.stage, "ok": self.ok, "problems": self.problems,
                "chain": [link.__dict__ for link in self.links]}


def _load(root: Path) -> tuple[dict, dict]:
    spec_path, lock_path = root / "dvc.yaml", root / "dvc.lock"
    if not spec_path.is_file():
        raise LineageError(f"no dvc.yaml in {root}: not a Twinloop project")
    spec = yaml.safe_load(spec_path.read_text())["stages"]
    lock = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {}) if lock_path.is_file() else {}
    return spec, lock


def resolve_stage(root: Path, target: str) -> str:
    """A stage (= asset) name, a stage's output folder, or any path inside one."""
    spec, _ = _load(root)
    if target in spec:
        return target
    path = Path(target)
    rel = (path if not path.is_absolute() else path.resolve().relative_to(root.resolve())).as_posix().rstrip("/")
    for stage, entry in spec.items():
        for out in entry.get("outs", []):
            if rel == out or rel.startswith(out + "/"):
                return stage
    raise LineageError(f"{target!r} is neither a stage ({', '.join(spec)}) nor inside a tracked output")


def upstream(spec: dict, stage: str) -> list[str]:
    """The stage and every stage it depends on, upstream first."""
    producer = {out: s for s, e in spec.items() for out in e.get("outs", [])}
    order: list[str] = []

    def visit(s: str) -> None:
        for dep in spec[s].get("deps", []):
            if dep in producer and producer[dep] not in order:
                visit(producer[dep])
        if s not in order:
            order.append(s)

    visit(stage)
    return order


def trace(root: str | Path, target: str, verify: bool = True) -> Lineage:
    root = Path(root).resolve()
    stage = resolve_stage(root, target)
    spec, lock = _load(root)
    producer = {out: s for s, e in spec.items() for out in e.get("outs", [])}
    links, problems = [], []
    for s in upstream(spec, stage):
        entry = lock.get(s)
        if entry is None:
            problems.append(f"{s}: never recorded in dvc.lock (materialize it)")
            continue
        out = entry["outs"][0]
        deps = {d["path"]: d.get("md5") for d in entry.get("deps", [])}
        link = Link(stage=s, out=out["path"], md5=out.get("md5"), files=out.get("nfiles"),
                    written=_mtime(root / out["path"]), recorded_in_commit=_commit_adding(root, out.get("md5")),
                    params=(entry.get("params") or {}).get("params.yaml", {}),
                    code={p: m for p, m in deps.items() if p not in producer},
                    inputs={p: m for p, m in deps.items() if p in producer})
        if s == "demos":
            info = root / out["path"] / "meta" / "info.json"
            if info.is_file():
                meta = json.loads(info.read_text())
                link.extra = {"episodes": meta.get("total_episodes"), "frames": meta.get("total_frames"),
                              "fps": meta.get("fps"), "robot_type": meta.get("robot_type")}
        for path, md5 in link.inputs.items():
            recorded = (lock.get(producer[path]) or {}).get("outs", [{}])[0].get("md5")
            if recorded != md5:
                problems.append(f"{s}: was made from {path} {md5}, but {producer[path]} now records {recorded} "
                                f"(re-materialize {s})")
        links.append(link)
    if verify:
        problems += _dvc_status(root, [link.stage for link in links])
    return Lineage(target, stage, links, problems)


def _dvc_status(root: Path, stages: list[str]) -> list[str]:
    """DVC's own comparison of each stage's deps and outs with dvc.lock (it re-hashes files whose mtime changed)."""
    if not stages:
        return []
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], cwd=root, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return [f"dvc status failed: {proc.stderr.strip()[-500:]}"]
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    status = json.loads(lines[-1]) if lines else {}
    problems = []
    for stage, changes in status.items():
        for change in changes if isinstance(changes, list) else [changes]:
            if not isinstance(change, dict):
                problems.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                if isinstance(paths, dict):
                    for path, what in paths.items():
                        files = _changed_files(root, path) if what == "modified" else []
                        detail = f": {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}" if files else ""
                        problems.append(f"{stage}: {kind.replace('changed ', '')} {path} {what}{detail} "
                                        "(differs from dvc.lock)")
                else:
                    problems.append(f"{stage}: {kind} {paths}")
    return problems


def _changed_files(root: Path, out: str) -> list[str]:
    """Which files inside a tracked folder differ from the listing DVC cached for its dvc.lock md5."""
    import hashlib

    _, lock = _load(root)
    md5 = next((o.get("md5") for e in lock.values() for o in e.get("outs", []) if o["path"] == out), None)
    if not md5 or not md5.endswith(".dir"):
        return []
    listing = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    if not listing.is_file():
        return []
    expected = {e["relpath"]: e["md5"] for e in json.loads(listing.read_text())}
    folder = root / out
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    changed = sorted((set(expected) ^ present))
    for rel in sorted(set(expected) & present):
        if hashlib.md5((folder / rel).read_bytes()).hexdigest() != expected[rel]:
            changed.append(rel)
    return sorted(changed)


def _mtime(path: Path) -> str | None:
    if not path.exists():
        return None
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _git(root: Path, *args: str) -> str:
    """git's output, or '' where git or the repository is missing."""
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _commit_adding(root: Path, md5: str | None) -> str | None:
    return (_git(root, "log", "-1", "--format=%H", "-S", md5, "--", "dvc.lock") or None) if md5 else None


def code_commit(root: str | Path) -> str | None:
    """The commit the code is at, `-dirty` when pipeline/, assets/ or resources/ differ from it; None outside git."""
    commit = _git(Path(root), "rev-parse", "HEAD")
    if commit and _git(Path(root), "status", "--porcelain", "--", "pipeline", "assets", "resources"):
        commit += "-dirty"
    return commit or None


def render(lineage: Lineage) -> str:
    lines = [f"lineage of {lineage.target} (stage {lineage.stage}), upstream first:"]
    for link in lineage.links:
        lines.append(f"\n{link.stage}: {link.out}  md5 {link.md5}" + (f", {link.files} files" if link.files else ""))
        commit = link.recorded_in_commit[:12] if link.recorded_in_commit else "none (dvc.lock change not committed)"
        lines.append(f"  written {link.written or 'missing on disk'}; recorded in git commit {commit}")
        if link.extra:
            lines.append("  dataset: " + ", ".join(f"{k} {v}" for k, v in link.extra.items()))
        for path, md5 in link.inputs.items():
            lines.append(f"  input {path}  {md5}")
        for path, md5 in link.code.items():
            lines.append(f"  code  {path}  {md5}")
        for section, values in link.params.items():
            flat = json.dumps(values, sort_keys=True)
            lines.append(f"  recipe {section}: {flat if len(flat) < 200 else flat[:197] + '...'}")
    lines.append("")
    if lineage.ok:
        lines.append("verified: every output and dependency matches dvc.lock, and every link matches its upstream")
    else:
        lines += ["MISMATCH:"] + [f"  {p}" for p in lineage.problems]
    return "\n".join(lines)


def stale_stages(root: str | Path) -> dict[str, list[str]]:
    """Stage -> why it is stale (changed code, recipe section, upstream output, or its own output), from
    `dvc status`; stages never materialized are listed too."""
    root = Path(root).resolve()
    spec, lock = _load(root)
    stale: dict[str, list[str]] = {s: ["never materialized"] for s in spec if s not in lock}
    for problem in _dvc_status(root, [s for s in spec if s in lock]):
        stage, _, reason = problem.partition(": ")
        stale.setdefault(stage, []).append(reason)
    return stale


def demos_changed_since_training(root: str | Path) -> str | None:
    """Why bc_policy should be re-trained (the demos' DVC md5 differs from the one it was trained on, or it never
    was), or None when it is current."""
    _, lock = _load(Path(root))
    demos = (lock.get("demos") or {}).get("outs", [{}])[0].get("md5")
    if demos is None:
        return None  # no demos yet: nothing to train on
    bc = lock.get("bc_policy")
    if bc is None:
        return "bc_policy was never trained"
    used = next((d.get("md5") for d in bc.get("deps", []) if d["path"] == "data/demos"), None)
    if used != demos:
        return f"data/demos is {demos}; bc_policy was trained on {used}"
    return None
