"""How good is a BC checkpoint: offline error on held-out demos and closed-loop success in the sim workcell.

The policy runs exactly as lerobot runs it on a robot (`prepare_observation_for_inference` -> preprocessor ->
`select_action` -> postprocessor), so a number here is the number `lerobot-record --policy.path=...` would see
in the same cell.

  held-out error      per-joint MSE (so101 units²) of the first predicted action vs the demonstrated one, over
                      every frame of the held-out episodes (never trained on)
  magnitude ratio     mean |predicted − current joint state| / mean |demonstrated − current joint state| on the
                      same frames: ~1 moves like the demonstrator, ≪ 1 is the under-trained "twitching" policy
  closed-loop success K seeded cube poses (bc.eval_seed..), success = cube resting in the bin; Wilson 95 % interval
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.demos.stage import DEMOS_REPO_ID
from pipeline.workcell.joints import LEROBOT_JOINT_NAMES
from pipeline.common.stats import wilson_interval

SETTLED_STEPS = 15  # the cube must rest in the bin this many control steps (0.5 s at 30 fps) to end an episode early


class LerobotPolicy:
    """A lerobot checkpoint folder (`pretrained_model/`) with its saved pre/post-processors."""

    def __init__(self, path: Path, device: str = "cpu"):
        import torch
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        self.device = torch.device(device)
        config = PreTrainedConfig.from_pretrained(path)
        config.device = device
        self.policy = get_policy_class(config.type).from_pretrained(path, config=config).to(self.device).eval()
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            self.policy.config, pretrained_path=str(path),
            preprocessor_overrides={"device_processor": {"device": device}},
            # actions stay on the policy's device (the saved postprocessor moves them to the CPU: a sync per step)
            postprocessor_overrides={"device_processor": {"device": device}})
        self.input_keys = list(self.policy.config.input_features)

    def reset(self) -> None:
        self.policy.reset()
        self.preprocessor.reset()
        self.postprocessor.reset()

    def act(self, observation: dict[str, np.ndarray], task: str = "") -> np.ndarray:
        """One action (so101 units) for one observation frame, as lerobot's synchronous inference computes it."""
        import torch
        from lerobot.policies.utils import prepare_observation_for_inference

        frame = {k: np.asarray(observation[k]) for k in self.input_keys}
        with torch.inference_mode():
            batch = prepare_observation_for_inference(frame, self.device, task, "so101_follower")
            action = self.postprocessor(self.policy.select_action(self.preprocessor(batch)))
        return action.squeeze(0).float().cpu().numpy()

    def first_actions(self, batch: dict) -> np.ndarray:
        """The first action of a fresh chunk for every frame of a dataset batch (no temporal state)."""
        import torch

        with torch.inference_mode():
            processed = self.preprocessor({k: v for k, v in batch.items() if k in self.input_keys or k == "task"})
            chunk = self.policy.predict_action_chunk(processed)
            return self.postprocessor(chunk[:, 0]).float().cpu().numpy()


def held_out_errors(policy: LerobotPolicy, dataset_root: Path, episodes: list[int]) -> dict:
    import torch
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    # Frames as the policy was trained on them (observation history, action chunk): lerobot's own windowing.
    meta = LeRobotDatasetMetadata(DEMOS_REPO_ID, root=dataset_root)
    dataset = LeRobotDataset(DEMOS_REPO_ID, root=dataset_root, episodes=episodes,
                             delta_timestamps=resolve_delta_timestamps(policy.policy.config, meta))
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False)
    predicted, demonstrated, state = [], [], []
    for batch in loader:
        predicted.append(policy.first_actions(batch))
        action, joints = batch["action"].numpy(), batch["observation.state"].numpy()
        demonstrated.append(action[:, 0] if action.ndim == 3 else action)  # a chunk starts at the current frame
        state.append(joints[:, -1] if joints.ndim == 3 else joints)  # a history ends at the current frame
    predicted, demonstrated, state = (np.concatenate(x) for x in (predicted, demonstrated, state))
    per_joint = ((predicted - demonstrated) ** 2).mean(axis=0)
    ratio = float(np.abs(predicted - state).mean() / max(np.abs(demonstrated - state).mean(), 1e-9))
    return {
        "held_out_episodes": episodes,
        "held_out_frames": int(len(predicted)),
        "held_out_action_mse": float(per_joint.mean()),
        "held_out_action_mse_per_joint": {n: round(float(v), 4) for n, v in zip(LEROBOT_JOINT_NAMES, per_joint)},
        "action_magnitude_ratio": round(ratio, 4),
    }


@dataclass(frozen=True)
class Rollout:
    seed: int
    cube_xy: tuple[float, float]
    success: bool
    steps: int
    mean_action_step: float  # mean |Δaction| between control steps (units): jerkiness in closed loop


def closed_loop(policy: LerobotPolicy, workcell_xml: Path, recipe, seeds: list[int], task: str,
                progress: bool = True) -> list[Rollout]:
    from pipeline.workcell.cell import Workcell

    workcell = Workcell(workcell_xml, recipe.workcell)
    needs_images = any(k.startswith("observation.images.") for k in policy.input_keys)
    max_steps = int(recipe.workcell.episode_seconds * recipe.workcell.fps)
    rollouts = []
    for seed in tqdm(seeds, desc="closed-loop episodes", unit="ep", disable=not progress):
        pose = workcell.reset(seed)
        policy.reset()
        settled, previous, deltas = 0, None, []
        while workcell.time_step < max_steps and settled < SETTLED_STEPS:
            action = policy.act(workcell.observation(with_images=needs_images), task)
            if previous is not None:
                deltas.append(float(np.abs(action - previous).mean()))
            previous = action
            workcell.step(action)
            settled = settled + 1 if workcell.cube_in_bin() else 0
        rollouts.append(Rollout(seed, (pose.x, pose.y), workcell.cube_in_bin(), workcell.time_step,
                                float(np.mean(deltas)) if deltas else 0.0))
    workcell.close()
    return rollouts


def success_summary(rollouts: list[Rollout]) -> dict:
    wins, n = sum(r.success for r in rollouts), len(rollouts)
    low, high = wilson_interval(wins, n)
    return {
        "sim_episodes": n,
        "sim_successes": wins,
        "sim_success_rate": wins / n,
        "sim_success_ci95": [round(low, 4), round(high, 4)],
        "sim_failed_seeds": [r.seed for r in rollouts if not r.success],
        "sim_mean_action_step": round(float(np.mean([r.mean_action_step for r in rollouts])), 4),
    }


def measure(run, out_dir: Path, dataset_root: Path, device: str, train_log_path: Path | None = None,
            log=print) -> dict:
    """All diagnostics of the checkpoint in `out_dir/pretrained_model`; writes the plots beside it.
    `dataset_root`: the demos as trained on (reduced to the policy's features: no video decoding when unused)."""
    recipe = run.parsed_recipe()
    policy = LerobotPolicy(out_dir / "pretrained_model", device)
    # the work folder's log (with its throughput figures) unless told otherwise
    train_log_path = train_log_path or out_dir / "train_log.jsonl"
    train_log = [json.loads(line) for line in Path(train_log_path).read_text().splitlines() if line]
    metrics = {
        "policy": recipe.bc.policy,
        "observations": list(policy.input_keys),
        "train_steps": int(train_log[-1]["steps"]) if train_log else 0,
        "final_loss": round(float(train_log[-1]["loss"]), 5) if train_log else float("nan"),
        "samples_per_s": round(float(np.median([r["samples_per_s"] for r in train_log])), 1) if train_log else 0.0,
    }
    log(f"held-out error on episodes {run.held_out_episodes}")
    metrics |= held_out_errors(policy, dataset_root, run.held_out_episodes)
    seeds = [recipe.bc.eval_seed + i for i in range(recipe.bc.eval_episodes)]
    log(f"{len(seeds)} closed-loop episodes in the sim workcell")
    rollouts = closed_loop(policy, Path(run.workcell_xml), recipe, seeds, recipe.demos.task)
    metrics |= success_summary(rollouts)
    metrics["min_action_magnitude_ratio"] = recipe.bc.min_action_magnitude_ratio
    plot_training(train_log, metrics, out_dir / "loss.png")
    plot_rollouts(rollouts, recipe, metrics, out_dir / "rollouts.png")
    log(f"sim success {metrics['sim_success_rate']:.0%} (95 % CI {metrics['sim_success_ci95']}), "
        f"magnitude ratio {metrics['action_magnitude_ratio']:.2f}")
    return metrics


def plot_training(train_log: list[dict], metrics: dict, out_png: Path) -> Path:
    """Loss curve (log scale) beside the held-out per-joint error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_joint) = plt.subplots(1, 2, figsize=(11, 3.8))
    if train_log:
        ax_loss.plot([r["steps"] for r in train_log], [r["loss"] for r in train_log], color="tab:blue")
    ax_loss.set(xlabel="training step", ylabel="loss (lerobot)", yscale="log", title="training loss")
    ax_loss.grid(alpha=0.3)
    per_joint = metrics["held_out_action_mse_per_joint"]
    ax_joint.bar(range(len(per_joint)), list(per_joint.values()), color="tab:orange")
    ax_joint.set_xticks(range(len(per_joint)), [n.replace("_", "\n") for n in per_joint], fontsize=8)
    ax_joint.set(ylabel="MSE (units²)", title=f"held-out action error (ratio {metrics['action_magnitude_ratio']:.2f})")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_rollouts(rollouts: list[Rollout], recipe, metrics: dict, out_png: Path) -> Path:
    """Top view of the cube start poses, green = placed in the bin, red = failed: where the policy breaks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cube = recipe.workcell.cube
    bin_cfg = recipe.workcell.bin
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.add_patch(Rectangle((cube.spawn_x.low, cube.spawn_y.low), cube.spawn_x.high - cube.spawn_x.low,
                           cube.spawn_y.high - cube.spawn_y.low, fill=False, ls="--", color="gray", label="spawn area"))
    bx, by = bin_cfg.center_xy
    sx, sy = bin_cfg.inner_size_xy
    ax.add_patch(Rectangle((bx - sx / 2, by - sy / 2), sx, sy, color="tab:blue", alpha=0.3, label="bin"))
    for ok in (True, False):
        pts = np.array([r.cube_xy for r in rollouts if r.success == ok]).reshape(-1, 2)
        ax.scatter(pts[:, 0], pts[:, 1], c="tab:green" if ok else "tab:red", s=25,
                   label=f"{'placed' if ok else 'failed'} ({len(pts)})")
    low, high = metrics["sim_success_ci95"]
    ax.set(xlabel="x (m)", ylabel="y (m)", aspect="equal",
           title=f"BC closed loop: {metrics['sim_success_rate']:.0%} [{low:.0%}, {high:.0%}]")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
