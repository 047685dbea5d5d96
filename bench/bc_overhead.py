"""What the `bc_policy` asset costs over plain `lerobot-train`, measured side by side in one run.

Both paths train the same config on the same data: path A materializes the Dagster asset (Pipes child process,
log tap, resumable work folder, then diagnostics and DVC commit), path B runs the `lerobot-train` command with the
exact arguments path A used (read back from its work folder), only the output folder differs. Throughput is
lerobot's own samples/s (the `smp/s` it logs every `log_freq` steps; the first window, warm-up, is dropped) so
both sides are measured by the same code; wall time of the training phase is printed too.

    .venv/bin/python bench/bc_overhead.py [--steps 600] [--batch-size 32] [--device auto] [--repeats 1]

Needs the demos and the workcell (`make demo`). Runs in a throw-away copy of the project (git + DVC, no remote).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_PER_S = re.compile(r"step:(\S+) .*smp/s:([\d.]+)")


def make_project(tmp: Path, args) -> Path:
    import yaml

    project = tmp / "project"
    project.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "pipeline", ".gitignore"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    recipe = yaml.safe_load((ROOT / args.params).read_text())
    recipe["bc"].update(steps=args.steps, batch_size=args.batch_size, log_freq=args.log_freq,
                        save_freq=args.steps, eval_episodes=1)
    recipe["project"]["dvc_remote"] = ""
    (project / "params.yaml").write_text(yaml.safe_dump(recipe))
    shutil.copytree(ROOT / args.demos, project / "data" / "demos")
    shutil.copytree(ROOT / args.workcell, project / "models" / "workcell")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    return project


def through_asset(project: Path, device: str) -> tuple[list[float], float, list[str]]:
    import dagster as dg

    from assets.bc import bc_policy
    from resources import ComputeDevice, default_resources

    shutil.rmtree(project / "runs", ignore_errors=True)
    resources = default_resources(str(project)) | {"compute": ComputeDevice(device=device)}
    t0 = time.perf_counter()
    result = dg.materialize([bc_policy], resources=resources)
    wall = time.perf_counter() - t0
    assert result.success
    [work] = (project / "runs" / "bc").iterdir()
    rows = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    train_args = (work / "lerobot_train_args.txt").read_text().splitlines()  # one argument a line; values hold spaces
    return [r["samples_per_s"] for r in rows[1:]], wall, train_args


def plain_lerobot_train(train_args: list[str], out_dir: Path) -> tuple[list[float], float]:
    args = [a if not a.startswith("--output_dir=") else f"--output_dir={out_dir}" for a in train_args]
    exe = Path(sys.executable).with_name("lerobot-train")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "lerobot.scripts.lerobot_train"]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"lerobot-train failed:\n{proc.stderr[-3000:]}")
    rates = [float(m.group(2)) for m in SAMPLES_PER_S.finditer(proc.stdout + proc.stderr)]
    return rates[1:], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--log-freq", type=int, default=50)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two paths this many times")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--demos", default="data/demos")
    parser.add_argument("--workcell", default="models/workcell")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")

    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp), args)
        os.environ["DAGSTER_HOME"] = str(Path(tmp) / "dagster_home")
        Path(os.environ["DAGSTER_HOME"]).mkdir()
        asset_rates, plain_rates, asset_walls, plain_walls = [], [], [], []
        for i in range(args.repeats):
            rates, wall, train_args = through_asset(project, args.device)
            asset_rates += rates
            asset_walls.append(wall)
            rates, wall = plain_lerobot_train(train_args, Path(tmp) / f"plain{i}")
            plain_rates += rates
            plain_walls.append(wall)
    device = next((a.split("=", 1)[1] for a in train_args if a.startswith("--policy.device=")), "?")
    a, p = statistics.median(asset_rates), statistics.median(plain_rates)
    print(f"device: {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores); "
          f"{args.steps} steps x batch {args.batch_size}, {args.repeats} repeat(s)")
    print(f"{'path':<34}{'samples/s (median)':>20}{'wall s':>10}")
    print(f"{'plain lerobot-train':<34}{p:>20.1f}{statistics.median(plain_walls):>10.1f}")
    print(f"{'bc_policy asset (Pipes child)':<34}{a:>20.1f}{statistics.median(asset_walls):>10.1f}")
    print(f"ratio asset/plain samples/s: {a / p:.3f}  (overhead {100 * (1 - a / p):+.1f} %; goal <= 5 %)")
    print("wall s: plain = the lerobot-train process; asset = the whole materialization (training, then 1 closed-loop "
          "episode, held-out error, plots, DVC commit)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
