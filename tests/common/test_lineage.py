"""`twinloop lineage` / `twinloop status` on a throw-away two-stage DVC project: the chain is printed and verified,
a one-byte change to an artifact is named, and so is a stage built from an upstream output that was later rebuilt."""

import json
import subprocess
import sys

import pytest
import yaml

DVC_YAML = {"stages": {
    "raw": {"cmd": "python make.py raw", "deps": ["make.py"], "params": ["raw"], "outs": ["data/raw"]},
    "model": {"cmd": "python make.py model", "deps": ["data/raw", "make.py"], "params": ["model"],
              "outs": ["models/model"]},
}}
MAKE = """import pathlib, sys, yaml
p = yaml.safe_load(open("params.yaml"))
stage = sys.argv[1]
out = pathlib.Path("data/raw" if stage == "raw" else "models/model")
out.mkdir(parents=True, exist_ok=True)
if stage == "raw":
    (out / "meta.txt").write_text(f"episodes {p['raw']['episodes']}")
else:
    (out / "weights.bin").write_bytes(bytes(range(256)) * p["model"]["size"])
"""


def _run(cwd, *args):
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"raw": {"episodes": 3}, "model": {"size": 4}}))
    (tmp_path / "make.py").write_text(MAKE)
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                    [sys.executable, "-m", "dvc", "repro", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "made"]):
        done = _run(tmp_path, *command)
        assert done.returncode == 0, done.stderr
    return tmp_path


def test_lineage_prints_and_verifies_the_chain(project):
    from pipeline.common.lineage import trace

    lineage = trace(project, "models/model/weights.bin")
    assert lineage.ok, lineage.problems
    assert [link.stage for link in lineage.links] == ["raw", "model"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    raw, model = lineage.links
    assert raw.md5 == lock["raw"]["outs"][0]["md5"] and model.md5 == lock["model"]["outs"][0]["md5"]
    assert model.inputs == {"data/raw": raw.md5} and "make.py" in model.code
    assert model.params == {"model": {"size": 4}}
    head = _run(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert raw.recorded_in_commit == head  # the commit that put this md5 into dvc.lock
    cli = _run(project, sys.executable, "-m", "pipeline.cli", "lineage", "model", "--json")
    assert cli.returncode == 0, cli.stderr
    out = json.loads(cli.stdout)
    assert out["ok"] and [c["md5"] for c in out["chain"]] == [raw.md5, model.md5]


def test_one_tampered_byte_is_named_and_fails(project):
    path = project / "data" / "raw" / "meta.txt"
    path.write_bytes(path.read_bytes()[:-1] + b"9")  # one byte
    cli = _run(project, sys.executable, "-m", "pipeline.cli", "lineage", "models/model")
    assert cli.returncode == 1
    assert "MISMATCH" in cli.stdout and "raw: outs data/raw modified: meta.txt" in cli.stdout
    status = _run(project, sys.executable, "-m", "pipeline.cli", "status")
    assert "raw: stale" in status.stdout and "model: stale" in status.stdout  # model's input changed too


def test_a_stage_built_from_a_replaced_upstream_is_a_broken_link(project):
    from pipeline.common.lineage import trace

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["raw"]["episodes"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert _run(project, sys.executable, "-m", "dvc", "repro", "-q", "--single-item", "raw").returncode == 0
    lineage = trace(project, "model")
    assert not lineage.ok
    assert any(p.startswith("model: was made from data/raw") for p in lineage.problems), lineage.problems
    with pytest.raises(Exception, match="neither a stage"):
        trace(project, "nowhere/else")


def test_materialize_is_a_no_op_when_nothing_changed(project):
    done = _run(project, sys.executable, "-m", "pipeline.cli", "materialize")
    assert done.returncode == 0 and "nothing changed" in done.stdout


def test_retraining_is_due_only_when_the_demos_changed(tmp_path):
    from pipeline.common.lineage import demos_changed_since_training

    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "demos": {"cmd": "x", "outs": ["data/demos"]},
        "bc_policy": {"cmd": "y", "deps": ["data/demos"], "outs": ["models/bc"]}}}))

    def lock(demos_md5, trained_on):
        stages = {"demos": {"cmd": "x", "outs": [{"path": "data/demos", "md5": demos_md5}]}}
        if trained_on:
            stages["bc_policy"] = {"cmd": "y", "deps": [{"path": "data/demos", "md5": trained_on}],
                                   "outs": [{"path": "models/bc", "md5": "b.dir"}]}
        (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))

    lock("a.dir", "a.dir")
    assert demos_changed_since_training(tmp_path) is None
    lock("c.dir", "a.dir")
    assert "bc_policy was trained on a.dir" in demos_changed_since_training(tmp_path)
    lock("c.dir", None)
    assert demos_changed_since_training(tmp_path) == "bc_policy was never trained"
