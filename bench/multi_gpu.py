"""One GPU vs N GPUs for the training stages, side by side in one run, through the stages' own multi-GPU paths.

    PYTHONPATH=. python3 bench/multi_gpu.py --stage rl --gpus 2                  # Isaac Lab distributed (torchrun)
    PYTHONPATH=. python3 bench/multi_gpu.py --stage bc --gpus 2 --demos DEMOS   # lerobot via accelerate launch

Each stage runs twice from a fresh work folder with the same recipe but `gpus` (the project's params.yaml with the
bench's overrides below): first 1, then N. The figures come from the stages' own metrics (with their timings):
  bc: lerobot-train's samples/s (median over its log steps, all processes counted), training wall time, final loss,
      held-out action error; the effective batch is batch_size x gpus, so steps x batch differ (same step count).
  rl: PPO env-steps/s over all GPUs (num_envs per GPU), and BC vs BC + residual twin success on the same seeds.
Prints the N-GPU / 1-GPU ratio of the throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OVERRIDES = {
    # BC: the default ACT, enough steps for a steady samples/s, data loaders to feed two GPUs, a short closed loop
    "bc": {"steps": 1000, "num_workers": 4, "log_freq": 50, "save_freq": 1000, "eval_episodes": 10},
    # RL: the GPU recipe's envs per GPU (bench/params_rl_gpu.yaml), a few iterations, one evaluation round
    "rl": {"num_envs": 1024, "iterations": 12, "save_every": 12, "eval_episodes": 1024},
}


def recipe_file(base: Path, stage: str, gpus: int, folder: Path) -> Path:
    params = yaml.safe_load(base.read_text())
    params[stage].update(OVERRIDES[stage], gpus=gpus)
    path = folder / f"params_{stage}_{gpus}gpu.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_bc(params: Path, demos: Path, workcell_xml: Path, work: Path) -> dict:
    from pipeline.bc.stage import build_bc_policy
    from pipeline.common.recipe import load_recipe

    t = time.perf_counter()
    metrics = build_bc_policy(load_recipe(params), demos, workcell_xml, work / "bc", work / "runs", device="cuda")
    return {"samples_per_s": metrics["samples_per_s"], "wall_s": time.perf_counter() - t,
            "steps": metrics["train_steps"], "final_loss": metrics["final_loss"],
            "held_out_action_mse": metrics["held_out_action_mse"], "sim_success_rate": metrics["sim_success_rate"]}


def run_rl(params: Path, twin: Path, bc: Path, work: Path) -> dict:
    from pipeline.rl.stage import read_metrics

    command = [sys.executable, "-m", "pipeline.rl.stage", "--params", str(params), "--twin", str(twin), "--bc",
               str(bc), "--out", str(work / "rl"), "--runs", str(work / "runs"), "--device", "cuda"]
    t = time.perf_counter()
    subprocess.run(command, check=True)
    metrics = read_metrics(work / "rl")  # + the run's wall-clock figures, kept out of the artifact
    s = metrics["twin_success"]
    return {"env_steps_per_s": metrics["train_env_steps_per_s"], "train_s": metrics["train_seconds"],
            "wall_s": time.perf_counter() - t, "envs": metrics["num_envs"],
            "bc": f"{s['bc']['successes']}/{s['bc']['episodes']}",
            "bc_residual": f"{s['bc_residual']['successes']}/{s['bc_residual']['episodes']}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("bc", "rl"), required=True)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--demos", type=Path, default=Path("data/demos"))
    parser.add_argument("--workcell", type=Path, default=Path("models/workcell/workcell.xml"))
    parser.add_argument("--twin", type=Path, default=Path("models/twin"))
    parser.add_argument("--bc", type=Path, default=Path("models/bc"))
    parser.add_argument("--keep", type=Path, help="keep the work folders here (default: a temporary folder)")
    args = parser.parse_args()
    import torch

    if torch.cuda.device_count() < args.gpus:
        sys.exit(f"--gpus {args.gpus}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    root = args.keep or Path(tempfile.mkdtemp(prefix="twinloop-multigpu-"))
    results = {}
    for gpus in (1, args.gpus):
        work = root / f"{args.stage}_{gpus}gpu"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        params = recipe_file(args.params, args.stage, gpus, work)
        print(f"=== {args.stage} on {gpus} GPU(s) ===", flush=True)
        results[gpus] = (run_bc(params, args.demos, args.workcell, work) if args.stage == "bc"
                         else run_rl(params, args.twin, args.bc, work))
        print(json.dumps(results[gpus]), flush=True)
    key = "samples_per_s" if args.stage == "bc" else "env_steps_per_s"
    print(f"\n{args.stage}: {torch.cuda.get_device_name(0)}, overrides {OVERRIDES[args.stage]}")
    for gpus, r in results.items():
        print(f"  {gpus} GPU(s): " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in r.items()))
    print(f"  ratio {args.gpus} GPUs / 1 GPU ({key}): {results[args.gpus][key] / results[1][key]:.2f}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
