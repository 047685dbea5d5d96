"""The `rl` section of params.yaml: residual PPO on the twin."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.common.sections import Section, Range, Positive

class RlRewardConfig(Section):
    """Pick-and-place reward terms (weights per control step)."""

    reach: float = 1.0  # 1 - tanh(|tcp - cube| / 5 cm)
    lift: float = 2.0  # cube 2 cm above where it rests
    place: float = 2.0  # lifted, 1 - tanh(|cube - bin| (xy) / 5 cm)
    # the cube at rest in the bin; the step that ends an episode as a success also pays it for every step the
    # episode no longer runs, so finishing is never worth less than hovering a lifted cube over the bin (without
    # it, lift + place per step outlast a success, and PPO learns not to let go)
    success: float = 10.0
    action_rate: float = -0.01  # |residual_t - residual_t-1|^2
    residual: float = -0.001  # |residual|^2: stay close to BC unless it pays


class RlRandomizationConfig(Section):
    """Domain randomization per episode (the cube's pose comes from workcell.cube's spawn ranges). The servo ranges
    default to the twin's identification (usd_twin fits them to the demos): centred on the identified values the
    twin's drives carry, widened by `uncertainty_sigmas` x their spread across the per-episode refits."""

    cube_mass_scale: Range = Range(low=0.8, high=1.25)  # the cube's mass is a density prior, not identified
    # servo stiffness and damping scale; None: 1 +- uncertainty_sigmas x the fit's relative spread of kp and kv
    joint_gain_scale: Range | None = None
    # command latency (control steps), both ends drawn; None: the range of the training episodes' best latencies,
    # widened by uncertainty_sigmas x their standard deviation (the twin's identified latency applies either way)
    action_latency_steps: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] | None = None
    uncertainty_sigmas: float = Field(2.0, ge=0)
    joint_noise_units: float = Field(0.5, ge=0)  # Gaussian noise on the actor's joint reading (so101 units)


class RlConfig(Section):
    """Stage `rl_policy`: a residual on the frozen BC policy, PPO (rsl_rl) in Isaac Lab on the USD twin."""

    physics: Literal["newton", "physx"] = "newton"  # physx needs Isaac Sim (not installable from PyPI)
    num_envs: Annotated[int, Field(ge=1)] = 64  # per GPU (with `gpus` > 1, gpus x num_envs envs in all)
    # GPUs for PPO: > 1 runs Isaac Lab's distributed mode (torchrun, one env + rsl_rl learner per GPU, gradients
    # all-reduced over NCCL, seed + rank per process); needs that many CUDA devices.
    gpus: Annotated[int, Field(ge=1)] = 1
    # None: the twin's own step (usd_twin's twin.physics_dt_s, authored in twin.usd), the step its demos replay at.
    # Measured on the default twin: the demos' actions replayed open loop succeed 15/24 at 1/480 s, 8/24 at 1/240
    # (the grasp slips), 13/24 at 1/960. Control runs at the recording's fps: decimation = 1 / (fps x dt)
    physics_dt_s: Positive | None = None
    episode_seconds: Positive = 8.0
    alpha: Positive = 5.0  # total = base + alpha * residual (so101 units; the arm spans -100..100)
    residual_clip: Positive = 1.0
    iterations: Annotated[int, Field(ge=1)] = 24
    steps_per_env: Annotated[int, Field(ge=1)] = 24
    learning_rate: Positive = 3e-4
    init_noise_std: Positive = 0.3
    actor_hidden: tuple[int, ...] = (128, 128)
    critic_hidden: tuple[int, ...] = (256, 256)
    save_every: Annotated[int, Field(ge=1)] = 10  # iterations between checkpoints (the most an interruption loses)
    seed: int = 0
    success_hold_steps: Annotated[int, Field(ge=1)] = 10  # control steps at rest in the bin that end an episode
    eval_episodes: Annotated[int, Field(ge=1)] = 32  # held-out seeded cube poses, BC alone and BC + residual
    eval_seed: int = 2_000_000
    rewards: RlRewardConfig = RlRewardConfig()
    randomization: RlRandomizationConfig = RlRandomizationConfig()
