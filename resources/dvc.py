"""Every DVC call of the project goes through this resource.

DVC's repository lock does not survive concurrent writers, so the calls are serialized twice: assets that use this
resource run in the Dagster pool `dvc` (limit 1, set in dagster.yaml) and, should two processes still meet, a file
lock around each call.
"""


import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml
from filelock import FileLock

from resources.paths import ProjectPaths

DVC_POOL = "dvc"


class DvcError(RuntimeError):
    pass


class DvcResource(dg.ConfigurableResource):
    paths: dg.ResourceDependency[ProjectPaths]
    push: bool = True  # push to the recipe's remote after each commit, when one is set
    # The cluster profile's object store (s3://bucket/prefix): overrides the recipe's `project.dvc_remote`, which
    # stays the local default. Credentials: the usual AWS variables (or ~/.aws), as boto reads them.
    remote_url: str = ""
    s3_endpoint_url: str = ""  # S3-compatible stores that are not AWS (MinIO, Ceph, R2): their endpoint URL

    def _run(self, *args: str) -> str:
        root = self.paths.root_path
        if not (root / ".dvc").is_dir():
            raise DvcError(f"{root} is not a DVC repository (no .dvc/): run `dvc init` there first")
        lock_dir = root / ".dvc" / "tmp"  # git-ignored, so absent in a fresh clone
        lock_dir.mkdir(exist_ok=True)
        with FileLock(str(lock_dir / "twinloop.lock")):
            # the venv's own dvc, whether or not the venv is on PATH
            proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DvcError(f"`dvc {' '.join(args)}` failed in {root}:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def ensure_remote(self) -> str | None:
        """Point the default remote at `remote_url`, else the recipe's `project.dvc_remote` (kept in the untracked
        .dvc/config.local)."""
        url = self.remote_url or self.paths.recipe().project.dvc_remote
        if not url:
            return None
        if "://" not in url and not Path(url).is_absolute():
            url = str((self.paths.root_path / url).resolve())
        self._run("remote", "add", "--local", "--force", "--default", "twinloop", url)
        if self.s3_endpoint_url:
            self._run("remote", "modify", "--local", "twinloop", "endpointurl", self.s3_endpoint_url)
        return url

    def commit_stage(self, stage: str) -> str:
        """Record a stage's outputs (cache + dvc.lock) after the asset wrote them; returns the output md5."""
        self._run("commit", "--force", stage)
        md5 = self.stage_out_md5(stage)
        if self.push and self.ensure_remote():
            self._run("push", stage)
        return md5

    def lineage_metadata(self, stage: str) -> dict:
        """What every materialization records besides its data version: the stage's DVC md5, the md5 of each
        upstream output it was built from and of its recipe sections (both as dvc.lock holds them), and the code
        commit (`-dirty` when pipeline/, assets/ or resources/ differ from it). `twinloop lineage` verifies them."""
        import hashlib
        import json

        root = self.paths.root_path
        lock = (yaml.safe_load((root / "dvc.lock").read_text()) or {})["stages"][stage]
        spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
        produced = {out for entry in spec.values() for out in entry.get("outs", [])}
        upstream = {d["path"]: d.get("md5") for d in lock.get("deps", []) if d["path"] in produced}
        params = (lock.get("params") or {}).get("params.yaml", {})
        from pipeline.common.lineage import code_commit

        commit = code_commit(root)
        return {
            "dvc_md5": lock["outs"][0]["md5"],
            "upstream_md5": dg.MetadataValue.json(upstream),
            "params_md5": hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest(),
            "code_commit": commit or "unknown (not a git checkout)",
        }

    def stage_out_md5(self, stage: str) -> str:
        lock_path = self.paths.root_path / "dvc.lock"
        if not lock_path.is_file():
            raise DvcError(f"no dvc.lock in {self.paths.root_path}: stage {stage!r} was never committed")
        lock = yaml.safe_load(lock_path.read_text()) or {}
        try:
            return lock["stages"][stage]["outs"][0]["md5"]
        except (KeyError, IndexError) as exc:
            raise DvcError(f"dvc.lock has no output md5 for stage {stage!r}") from exc
