"""Stage `rl_policy`: train the residual with rsl_rl PPO in the twin, score BC alone vs BC + residual, export.

Runs as its own process (`python -m pipeline.rl.stage`): Isaac Lab keeps one simulation per process, and the Dagster
asset launches it through Pipes like `bc_policy`. With `rl.gpus` = N > 1 it re-launches itself under `torchrun
--nproc_per_node N` (Isaac Lab's distributed mode: each rank steps its own `num_envs` envs on `cuda:<rank>` with
seed + rank, rsl_rl all-reduces the gradients over NCCL; rank 0 checkpoints, evaluates and exports).

Work folder `runs/rl/<fingerprint>/` (recipe, twin and BC checkpoint md5): a rerun with the same inputs resumes from
its last rsl_rl checkpoint; raising `rl.iterations` trains on.

Writes to `out_dir` (models/rl):
  model.pt            the last rsl_rl checkpoint (actor, critic, optimizer, iteration)
  residual_actor.pt   the actor as TorchScript (its observation normalizer inside): actor obs -> residual
  policy_manifest.json  how to run "BC + residual": BC checkpoint + md5, alpha, clip, observation/action spec
  metrics.json        env-steps/s, training curve, BC vs BC + residual twin success (Wilson 95 %) on held-out seeds
  training.png, evaluation.png

User guide: docs/rl.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from pipeline.common.artifacts import file_md5, read_timings, with_timings
from pipeline.common.progress import Reporter
from pipeline.common.layout import RUNS_DIR, STAGE_DIRS
from pipeline.common.recipe import Recipe, load_recipe
from pipeline.rl.env_cfg import RlError

ACTOR_OBSERVATION = (["joint." + j for j in ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex",
                                            "wrist_roll", "gripper")] + ["bc_action." + str(i) for i in range(6)]
                     + ["previous_residual." + str(i) for i in range(6)])


def fingerprint(recipe: Recipe, twin_usd: Path, bc_checkpoint: Path) -> str:
    """What shapes the trained residual; `iterations` and the evaluation settings are left out (raising iterations
    resumes)."""
    payload = json.dumps({
        "rl": recipe.rl.model_dump(mode="json", exclude={"iterations", "eval_episodes", "eval_seed", "save_every"}),
        "twin": file_md5(twin_usd), "bc": file_md5(bc_checkpoint / "model.safetensors")}, sort_keys=True)
    return hashlib.md5(payload.encode()).hexdigest()[:12]


def _last_checkpoint(work_dir: Path) -> Path | None:
    found = sorted(work_dir.glob("model_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def evaluate(env, act, episodes: int, seed: int) -> list[bool]:
    """Success of `episodes` episodes on cube poses drawn from seeds seed, seed+1, ...: rounds of one episode per
    env (the same seeds for every policy), no randomization but the pose. `act(obs) -> residual`."""
    import torch

    from pipeline.rl.env_cfg import twin_latency_steps

    cfg = env.cfg
    saved = (cfg.fixed_cube_seeds, cfg.seed, cfg.joint_noise_units, cfg.action_latency_steps,
             cfg.joint_gain_scale, cfg.cube_mass_scale)
    own = twin_latency_steps(cfg.twin_usd)  # the twin's own servo latency, no draws
    cfg.fixed_cube_seeds, cfg.seed, cfg.joint_noise_units, cfg.action_latency_steps = True, seed, 0.0, (own, own)
    cfg.joint_gain_scale, cfg.cube_mass_scale = (1.0, 1.0), (1.0, 1.0)
    env.next_seed = 0
    results = []
    try:
        with torch.inference_mode():  # rsl_rl made the env's buffers in inference mode
            while len(results) < episodes:
                obs, _ = env.reset()
                done = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
                success = torch.zeros_like(done)
                for _ in range(int(env.max_episode_length) + 1):
                    obs, _, terminated, truncated, _ = env.step(act(obs))
                    finished = (terminated | truncated) & ~done
                    success |= finished & env.episode_success
                    done |= finished
                    if done.all():
                        break
                results += success.cpu().tolist()
    finally:
        (cfg.fixed_cube_seeds, cfg.seed, cfg.joint_noise_units, cfg.action_latency_steps,
         cfg.joint_gain_scale, cfg.cube_mass_scale) = saved
    return results[:episodes]


def build_rl_policy(recipe: Recipe, twin_dir: Path, bc_dir: Path, out_dir: Path, runs_dir: Path,
                    device: str = "cpu", log=print) -> dict:
    import torch
    from isaaclab_rl.rsl_rl import RslRlVecEnvWrapper
    from isaaclab_rl.rsl_rl.utils import check_rsl_rl_version, create_rsl_rl_runner, handle_deprecated_rsl_rl_cfg

    from pipeline.common.artifacts import (file_md5, portable, remove_other_runs, replace_dir, staging_dir,
                                           write_config, write_metrics)
    from pipeline.rl.agent_cfg import make_agent_cfg
    from pipeline.rl.env import TwinPickPlaceEnv
    from pipeline.rl.env_cfg import make_env_cfg
    from pipeline.common.stats import wilson_interval

    cfg = recipe.rl
    if device == "cuda" and not torch.cuda.is_available():
        raise RlError("device cuda requested, but torch sees no CUDA device")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # one process of a distributed run (torchrun): its own GPU and seed, as Isaac Lab's train.py
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    twin_usd, bc_checkpoint = Path(twin_dir) / "twin.usd", Path(bc_dir) / "pretrained_model"
    env_cfg = make_env_cfg(recipe, twin_usd, bc_checkpoint, cfg.num_envs, device, seed=cfg.seed + rank)
    work_dir = Path(runs_dir) / "rl" / fingerprint(recipe, twin_usd, bc_checkpoint)
    work_dir.mkdir(parents=True, exist_ok=True)
    remove_other_runs(work_dir)
    t0 = time.perf_counter()
    env = TwinPickPlaceEnv(env_cfg)
    log(f"{cfg.num_envs} twin envs on {device} ({time.perf_counter() - t0:.0f} s to build); work folder {work_dir}")
    agent = handle_deprecated_rsl_rl_cfg(make_agent_cfg(cfg, device), check_rsl_rl_version())
    agent.seed = cfg.seed + rank
    runner = create_rsl_rl_runner(RslRlVecEnvWrapper(env, clip_actions=agent.clip_actions), agent,
                                  log_dir=str(work_dir))
    last = _last_checkpoint(work_dir)
    done = 0
    if last is None:
        zero_residual_head(runner.alg.actor)
    if last is not None:
        runner.load(str(last))
        done = runner.current_learning_iteration + 1
        log(f"resuming from {last.name}: {done} of {cfg.iterations} iterations done")
    remaining = max(0, cfg.iterations - done)
    t_train = time.perf_counter()
    if remaining:
        runner.learn(num_learning_iterations=remaining, init_at_random_ep_len=done == 0)
    train_seconds = time.perf_counter() - t_train
    train_steps = remaining * cfg.steps_per_env * cfg.num_envs * world
    if rank != 0:  # rank 0 holds the checkpoints and does the rest
        env.close()
        return None

    log(f"evaluating BC alone and BC + residual on {cfg.eval_episodes} held-out cube poses")
    policy = runner.get_inference_policy(device=str(env.device))
    t_eval = time.perf_counter()
    zeros = torch.zeros(env.num_envs, 6, device=env.device)
    bc_only = evaluate(env, lambda obs: zeros, cfg.eval_episodes, cfg.eval_seed)
    residual = evaluate(env, lambda obs: _act(policy, obs), cfg.eval_episodes, cfg.eval_seed)
    eval_seconds = time.perf_counter() - t_eval

    staging = staging_dir(Path(out_dir))
    staging.mkdir(parents=True)
    final = _last_checkpoint(work_dir)
    (staging / "model.pt").write_bytes(final.read_bytes())
    runner.export_policy_to_jit(str(staging), "residual_actor.pt")
    curve = _training_curve(work_dir)
    successes = {"bc": bc_only, "bc_residual": residual}
    scores = {}
    for name, res in successes.items():
        k, n = int(sum(res)), len(res)
        scores[name] = {"successes": k, "episodes": n, "success_rate": k / n if n else 0.0,
                        "ci95": list(wilson_interval(k, n))}
    metrics = {
        "iterations": cfg.iterations, "resumed_from_iteration": done, "num_envs": cfg.num_envs * world,
        "gpus": world if world > 1 else (1 if device.startswith("cuda") else 0), "device": device,
        "train_env_steps": train_steps,
        "train_env_steps_per_s": train_steps / train_seconds if remaining and train_seconds > 0 else None,
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "eval_seeds": [cfg.eval_seed, cfg.eval_seed + cfg.eval_episodes - 1],
        "twin_success": scores,
        "success_gain_points": 100 * (scores["bc_residual"]["success_rate"] - scores["bc"]["success_rate"]),
        "training_curve": curve,
        "work_dir": portable(work_dir, Path.cwd()),  # the stage runs in the project root
    }
    manifest = {
        "kind": "bc+residual",
        "bc_checkpoint": portable(bc_checkpoint, Path.cwd()), "bc_model_md5": file_md5(bc_checkpoint / "model.safetensors"),
        "residual_actor": "residual_actor.pt", "alpha": cfg.alpha, "residual_clip": cfg.residual_clip,
        "fps": recipe.workcell.fps,
        "action": "so101_follower joint targets (units) = bc_action + alpha * clip(residual_actor(obs), +-clip)",
        "actor_observation": ACTOR_OBSERVATION,
        "actor_observation_scaling": "joints / 100, bc_action / 100, previous residual as commanded",
        "bc_observation": ["observation.state", "observation.environment_state"],
        "twin_md5": file_md5(twin_usd),
    }
    (staging / "policy_manifest.json").write_text(json.dumps(manifest, indent=2))
    write_config(staging, {"rl": cfg.model_dump(mode="json"), "workcell_fps": recipe.workcell.fps,
                           "twin_md5": manifest["twin_md5"], "bc_model_md5": manifest["bc_model_md5"]})
    (work_dir / "timings.json").write_text(json.dumps(write_metrics(staging, metrics), indent=2))
    _figures(curve, scores, staging)
    replace_dir(staging, Path(out_dir))
    env.close()
    return metrics


def read_metrics(out_dir: Path) -> dict:
    """A finished run's metrics.json with its wall-clock figures merged back in (they stay out of the artifact: the
    run left them in its work folder, relative to the project root it ran in)."""
    metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
    return with_timings(metrics, read_timings(Path(metrics["work_dir"]) / "timings.json"))


def zero_residual_head(actor) -> None:
    """Start the residual at exactly zero: the actor's output layer (the Gaussian's mean) gets zero weights and bias,
    so before training BC + residual *is* BC and PPO explores around it through the action noise alone. An
    undertrained residual then stays close to BC instead of adding a random offset of up to alpha units (on the
    stand-in robot that offset cost 36 points with the CPU recipe's 20 iterations); the usual residual-RL start."""
    import torch

    last = [m for m in actor.mlp.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()


def _act(policy, obs):
    import torch

    with torch.inference_mode():
        return policy(obs)


def _training_curve(work_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve: dict[str, list] = {}
    for events in sorted(work_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag, key in (("Train/mean_reward", "mean_reward"), ("Metrics/success_rate", "success_rate"),
                         ("Perf/total_fps", "env_steps_per_s")):
            if tag in acc.Tags()["scalars"]:
                for s in acc.Scalars(tag):
                    curve.setdefault(key, []).append([int(s.step), float(s.value)])
    return {k: sorted(v) for k, v in curve.items()}


def _figures(curve: dict, scores: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, key, label in ((axes[0], "mean_reward", "mean episode reward"),
                           (axes[1], "success_rate", "success rate (episodes ending)")):
        if curve.get(key):
            x, y = zip(*curve[key])
            ax.plot(x, y, marker=".")
        ax.set_xlabel("PPO iteration")
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    names = {"bc": "BC alone", "bc_residual": "BC + residual"}
    for i, (key, s) in enumerate(scores.items()):
        lo, hi = s["ci95"]
        ax.bar(i, s["success_rate"], color=("tab:gray", "tab:green")[i])
        ax.errorbar(i, s["success_rate"], yerr=[[s["success_rate"] - lo], [hi - s["success_rate"]]], color="k",
                    capsize=6)
        ax.text(i, min(hi + 0.03, 1.0), f"{s['successes']}/{s['episodes']}", ha="center")
    ax.set_xticks(range(len(scores)), [names[k] for k in scores])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("twin success (Wilson 95 %)")
    fig.tight_layout()
    fig.savefig(out / "evaluation.png", dpi=90)
    plt.close(fig)


def launch_distributed(gpus: int, argv: list[str], device: str) -> None:
    """Isaac Lab's multi-GPU training: this stage once per GPU under torchrun (`--standalone`: one machine)."""
    from pipeline.common.multi_gpu import launch_on_gpus

    launch_on_gpus([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                    "-m", "pipeline.rl.stage", *argv], "rl.gpus", gpus, device, RlError)


def main(argv: list[str] | None = None, reporter: Reporter | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.rl.stage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--twin", default=STAGE_DIRS["usd_twin"])
    parser.add_argument("--bc", default=STAGE_DIRS["bc_policy"])
    parser.add_argument("--out", default=STAGE_DIRS["rl_policy"])
    parser.add_argument("--runs", default=RUNS_DIR)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if "LOCAL_RANK" in os.environ:  # one rank of a distributed run: plain log lines, rank 0 writes the outputs
        build_rl_policy(load_recipe(args.params), Path(args.twin), Path(args.bc), Path(args.out), Path(args.runs),
                        device=args.device)
        return 0
    reporter = reporter or Reporter()
    error = None
    try:
        recipe = load_recipe(args.params)
        if recipe.rl.gpus > 1:
            launch_distributed(recipe.rl.gpus, argv if argv is not None else sys.argv[1:], args.device)
            metrics = read_metrics(Path(args.out))
        else:
            metrics = build_rl_policy(recipe, Path(args.twin), Path(args.bc), Path(args.out), Path(args.runs),
                                      device=args.device, log=reporter.info)
        s = metrics["twin_success"]
        reporter.materialized({"bc_success_rate": s["bc"]["success_rate"],
                               "bc_residual_success_rate": s["bc_residual"]["success_rate"],
                               "train_env_steps_per_s": metrics.get("train_env_steps_per_s") or 0.0,
                               "train_seconds": metrics.get("train_seconds", 0.0),
                               "eval_seconds": metrics.get("eval_seconds", 0.0)})
        print(json.dumps({k: v for k, v in metrics.items() if k != "training_curve"}, indent=2))
        return 0
    except RlError as exc:
        error = exc
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        reporter.close(error)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

