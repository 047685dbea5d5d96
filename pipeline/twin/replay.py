"""Open-loop replay: send a recording's actions to the twin's servos and compare the joints the twin reaches with
the joints the recording measured — the sim<->real dynamics gap, per joint, in degrees.

Each episode starts from its first recorded state; each action is held for one frame (1/fps s, several physics
steps); the twin's joints after action t are compared with the recorded `observation.state` at t+1 (lerobot records
the state, then sends the action). Nothing closes the loop, so errors accumulate where the dynamics differ: that is
what the number measures. Joint values are converted with Twinloop's one lerobot<->radian mapping
(`pipeline.workcell.joints`); for a real arm the error therefore also holds its calibration's departure from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.workcell.joints import LIMITS_HI_RAD, LIMITS_LO_RAD, SIM_JOINTS


@dataclass
class EpisodeReplay:
    episode: int
    recorded_deg: np.ndarray  # [T, 6] recorded joints at frames 1..T
    replayed_deg: np.ndarray  # [T, 6] the twin's joints after actions 0..T-1
    commanded_deg: np.ndarray  # [T, 6] the actions 0..T-1


def replay_dataset(twin, root: Path, max_episodes: int = 0, progress=None, servo=None,
                   model=None) -> list[EpisodeReplay]:
    """Replay up to `max_episodes` episodes (0: all) of the LeRobot dataset at `root` in the loaded twin, under the
    servo profile `servo` (default: the drives the twin's USD carries).

    Newton builds the twin's MuJoCo model (its `SolverMuJoCo` conversion of the USD: joints, PD servos with the
    authored gains and torque limits, contacts); the loop steps that model with MuJoCo's C engine directly, which
    skips Newton's per-step state copies (5 ms a step on CPU through `solver.step`, ~0.1 ms native)."""
    from pipeline.demos.checks import DemoData
    from pipeline.twin.identify import ReplayModel, load_episodes

    fps = float(DemoData.load(root).meta.fps)
    episodes = load_episodes(root)
    if max_episodes:
        episodes = episodes[:max_episodes]
    model = model or ReplayModel(twin)
    servo = servo or model.authored()
    bar = progress(len(episodes)) if progress else None
    results = []
    for ep in episodes:
        replayed = model.replay(ep, servo, fps)
        actions = np.clip(ep.actions, LIMITS_LO_RAD, LIMITS_HI_RAD)
        results.append(EpisodeReplay(ep.index, np.degrees(ep.states[1:]), np.degrees(replayed),
                                     np.degrees(actions[:-1])))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return results


def summarize(replays: list[EpisodeReplay]) -> dict:
    """Per-joint RMSE / p95 / max tracking error (degrees) over all replayed frames, and the mean over joints."""
    err = np.concatenate([r.replayed_deg - r.recorded_deg for r in replays])
    rmse = np.sqrt((err ** 2).mean(0))
    per_episode = [float(np.sqrt(((r.replayed_deg - r.recorded_deg) ** 2).mean())) for r in replays]
    return {
        "episodes": len(replays),
        "frames": int(len(err)),
        "rmse_deg": dict(zip(SIM_JOINTS, rmse.round(3).tolist())),
        "p95_deg": dict(zip(SIM_JOINTS, np.percentile(np.abs(err), 95, axis=0).round(3).tolist())),
        "max_deg": dict(zip(SIM_JOINTS, np.abs(err).max(0).round(3).tolist())),
        "mean_rmse_deg": float(rmse.mean()),
        "episode_rmse_deg": {"mean": float(np.mean(per_episode)), "std": float(np.std(per_episode)),
                             "min": float(np.min(per_episode)), "max": float(np.max(per_episode))},
    }


def replay_figure(runs: dict[str, list[EpisodeReplay]], path: Path) -> None:
    """One row per dataset: each joint's recorded state, the twin's replay and the command, first episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, reps[0]) for name, reps in runs.items() if reps]
    fig, axes = plt.subplots(len(rows), 6, figsize=(18, 2.8 * len(rows)), squeeze=False)
    for r, (name, rep) in enumerate(rows):
        t = np.arange(1, len(rep.recorded_deg) + 1)
        for j, joint in enumerate(SIM_JOINTS):
            ax = axes[r, j]
            ax.plot(t, rep.commanded_deg[:, j], color="0.7", lw=1, label="action")
            ax.plot(t, rep.recorded_deg[:, j], color="tab:blue", lw=1.4, label="recorded")
            ax.plot(t, rep.replayed_deg[:, j], color="tab:red", lw=1.2, ls="--", label="twin (open loop)")
            rmse = np.sqrt(np.mean((rep.replayed_deg[:, j] - rep.recorded_deg[:, j]) ** 2))
            ax.set_title(f"{name} ep {rep.episode}: {joint}\nRMSE {rmse:.2f} deg", fontsize=9)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("deg")
            if r == len(rows) - 1:
                ax.set_xlabel("frame")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
