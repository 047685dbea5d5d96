"""The residual pick-and-place task on the USD twin: an Isaac Lab 3 `DirectRLEnv`, kit-less on Newton + MJWarp.

Each env holds a copy of `models/twin/twin.usd` (robot, colliders, cube, splat, cameras); Isaac Lab's cloner
replicates it and Newton steps all copies at once (MJWarp on Warp's CPU backend here, CUDA on a GPU). Every asset is
a local file: the table is the twin's own collider, no ground plane is downloaded.

One control step (the recording's fps): the frozen BC policy proposes `base` from the robot's joints and the cube
pose (what it was trained on), the learned residual adds `alpha * clip(residual)`, and the sum (so101 units) goes to
the servos as joint targets. Observations:
  policy (the actor; what a real cell has): joint readings (noisy), the BC action, the previous residual
  critic (privileged, training only): + cube pose and velocity, TCP position, bin centre, episode time
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from isaaclab.envs import DirectRLEnv, DirectRLEnvCfg
from isaaclab.utils import configclass

from pipeline.workcell.joints import LIMITS_HI_RAD, LIMITS_LO_RAD, LEROBOT_HI, LEROBOT_LO

from pipeline.rl import TASK_ID  # noqa: F401  (registered there)
ACTOR_OBS = 18  # joints 6 + BC action 6 + previous residual 6
CRITIC_OBS = ACTOR_OBS + 3 + 4 + 3 + 3 + 3 + 1  # cube pos, quat, lin vel; tcp; bin centre; time


def pick_place_reward(w: dict, reach, lifted, place, in_bin, succeeded, steps_left, rate, size):
    """One control step's reward (weights `w`, rl.rewards). A success ends the episode, so its step also pays the
    in-bin reward for each of the `steps_left` steps the episode no longer runs: ending with a success is then never
    worth less than hovering a lifted cube over the bin for the rest of the episode (see RlRewardConfig)."""
    success = in_bin + succeeded * steps_left
    return (w.get("reach", 0) * reach + w.get("lift", 0) * lifted + w.get("place", 0) * place
            + w.get("success", 0) * success + w.get("action_rate", 0) * rate + w.get("residual", 0) * size)


@configclass
class TwinPickPlaceEnvCfg(DirectRLEnvCfg):
    """Filled in by `make_env_cfg` from the recipe and the twin (the env config, apart from the agent's)."""

    decimation: int = 8
    episode_length_s: float = 8.0
    action_space: int = 6
    observation_space: int = ACTOR_OBS
    state_space: int = CRITIC_OBS
    twin_usd: str = ""
    bc_checkpoint: str = ""
    task: str = ""
    alpha: float = 5.0
    residual_clip: float = 1.0
    fps: int = 30
    cube_spawn_x: tuple[float, float] = (0.16, 0.24)
    cube_spawn_y: tuple[float, float] = (-0.08, 0.08)
    cube_spawn_yaw_deg: tuple[float, float] = (-45.0, 45.0)
    bin_centre: tuple[float, float, float] = (0.12, 0.17, 0.0)
    bin_half_size: tuple[float, float] = (0.045, 0.045)
    bin_rim_z: float = 0.03
    tcp_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    success_hold_steps: int = 10
    reward_weights: dict = {}
    cube_mass_scale: tuple[float, float] = (1.0, 1.0)
    joint_gain_scale: tuple[float, float] = (1.0, 1.0)
    action_latency_steps: tuple[int, int] = (0, 0)  # each episode delays commands by lo..hi control steps
    joint_noise_units: float = 0.0
    fixed_cube_seeds: bool = False  # evaluation: episode k of env i uses seed eval_seed + ...


class TwinPickPlaceEnv(DirectRLEnv):
    cfg: TwinPickPlaceEnvCfg

    def __init__(self, cfg: TwinPickPlaceEnvCfg, render_mode: str | None = None, **kwargs):
        super().__init__(cfg, render_mode, **kwargs)
        from pipeline.rl.base_policy import BatchedBC

        self.robot = self.scene["robot"]
        self.cube = self.scene["cube"]
        n, dev = self.num_envs, self.device
        self.bc = BatchedBC(cfg.bc_checkpoint, n, str(dev), cfg.task)
        self.gripper_body = self.robot.find_bodies("gripper")[0][0]
        self.lo = torch.tensor(LIMITS_LO_RAD, dtype=torch.float32, device=dev)
        self.hi = torch.tensor(LIMITS_HI_RAD, dtype=torch.float32, device=dev)
        self.units_lo = torch.tensor(LEROBOT_LO, dtype=torch.float32, device=dev)
        self.units_hi = torch.tensor(LEROBOT_HI, dtype=torch.float32, device=dev)
        self.tcp_offset = torch.tensor(cfg.tcp_offset, dtype=torch.float32, device=dev)
        self.bin_centre = torch.tensor(cfg.bin_centre, dtype=torch.float32, device=dev)
        self.bin_half = torch.tensor(cfg.bin_half_size, dtype=torch.float32, device=dev)
        self.base_action = torch.zeros(n, 6, device=dev)  # so101 units
        self.residual = torch.zeros(n, 6, device=dev)
        self.prev_residual = torch.zeros(n, 6, device=dev)
        self.latency = torch.zeros(n, dtype=torch.long, device=dev)
        self.history = torch.zeros(n, cfg.action_latency_steps[1] + 1, 6, device=dev)  # commanded targets
        self.rest_steps = torch.zeros(n, dtype=torch.long, device=dev)
        self.cube_rest_z = float(self.cube.data.root_pos_w.torch[0, 2])
        self.default_stiffness = self.robot.data.joint_stiffness.torch.clone()
        self.default_damping = self.robot.data.joint_damping.torch.clone()
        self.default_cube_mass = self.cube.data.body_mass.torch.clone() if hasattr(self.cube.data, "body_mass") \
            else None
        self.episode_seeds = torch.zeros(n, dtype=torch.long)
        self.next_seed = 0
        self.generator = torch.Generator().manual_seed(int(cfg.seed or 0))
        self.successes = torch.zeros(n, dtype=torch.bool, device=dev)
        self.episode_success = torch.zeros(n, dtype=torch.bool, device=dev)

    # --- units -------------------------------------------------------------------------------------------------
    def to_radians(self, units: torch.Tensor) -> torch.Tensor:
        frac = (units - self.units_lo) / (self.units_hi - self.units_lo)
        return self.lo + frac * (self.hi - self.lo)

    def to_units(self, radians: torch.Tensor) -> torch.Tensor:
        frac = (radians - self.lo) / (self.hi - self.lo)
        return self.units_lo + frac * (self.units_hi - self.units_lo)

    # --- sim state ---------------------------------------------------------------------------------------------
    def joint_units(self) -> torch.Tensor:
        return self.to_units(self.robot.data.joint_pos.torch[:, :6])

    def cube_local(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Cube position (env frame) and orientation (w, x, y, z, as the recordings' environment_state)."""
        pos = self.cube.data.root_pos_w.torch - self.scene.env_origins
        xyzw = self.cube.data.root_quat_w.torch
        return pos, torch.cat([xyzw[:, 3:4], xyzw[:, :3]], 1)

    def tcp_local(self) -> torch.Tensor:
        pos = self.robot.data.body_pos_w.torch[:, self.gripper_body]
        xyzw = self.robot.data.body_quat_w.torch[:, self.gripper_body]
        return pos + _rotate(xyzw, self.tcp_offset.expand_as(pos)) - self.scene.env_origins

    def in_bin(self) -> torch.Tensor:
        pos, _ = self.cube_local()
        inside = (torch.abs(pos[:, :2] - self.bin_centre[:2]) < self.bin_half).all(1)
        below_rim = pos[:, 2] < self.cfg.bin_rim_z + 0.02
        slow = torch.linalg.norm(self.cube.data.root_lin_vel_w.torch, dim=1) < 0.05
        released = torch.linalg.norm(self.tcp_local() - pos, dim=1) > 0.03
        return inside & below_rim & slow & released

    # --- DirectRLEnv -------------------------------------------------------------------------------------------
    def _pre_physics_step(self, actions: torch.Tensor) -> None:
        self.prev_residual = self.residual
        self.residual = torch.clamp(actions, -self.cfg.residual_clip, self.cfg.residual_clip)
        target = self.to_radians(self.base_action + self.cfg.alpha * self.residual)
        target = torch.maximum(torch.minimum(target, self.hi), self.lo)
        self.history = torch.cat([target[:, None], self.history[:, :-1]], 1)  # newest first
        self.target = self.history[torch.arange(self.num_envs, device=self.device), self.latency]
        self._target_applied = False

    def _apply_action(self) -> None:
        # Isaac Lab calls this before each of the `decimation` physics steps; the servo target is constant over a
        # control step and the actuator keeps it, so it is written once (tested: same trajectory as every step).
        if not self._target_applied:
            self.robot.actuators.target_command.set_position_index(value=self.target)
            self._target_applied = True

    def _observation(self) -> dict[str, torch.Tensor]:
        pos, quat = self.cube_local()
        return {"observation.state": self.joint_units(), "observation.environment_state": torch.cat([pos, quat], 1)}

    def _get_observations(self) -> dict:
        self.base_action = self.bc(self._observation()).to(self.device)
        joints = self.joint_units()
        if self.cfg.joint_noise_units > 0:
            joints = joints + self.cfg.joint_noise_units * torch.randn_like(joints)
        actor = torch.cat([joints / 100, self.base_action / 100, self.residual], 1)
        pos, quat = self.cube_local()
        time_frac = (self.episode_length_buf.float() / self.max_episode_length)[:, None]
        critic = torch.cat([actor, pos, quat, self.cube.data.root_lin_vel_w.torch, self.tcp_local(),
                            self.bin_centre.expand(self.num_envs, 3), time_frac], 1)
        return {"policy": actor, "critic": critic}

    def _get_rewards(self) -> torch.Tensor:
        w = self.cfg.reward_weights
        pos, _ = self.cube_local()
        reach = 1 - torch.tanh(torch.linalg.norm(self.tcp_local() - pos, dim=1) / 0.05)
        lifted = (pos[:, 2] > self.cube_rest_z + 0.02).float()
        place = lifted * (1 - torch.tanh(torch.linalg.norm(pos[:, :2] - self.bin_centre[:2], dim=1) / 0.05))
        in_bin = self.in_bin().float()
        remaining = (self.max_episode_length - self.episode_length_buf).clamp(min=0).float()
        rate = ((self.residual - self.prev_residual) ** 2).sum(1)
        size = (self.residual ** 2).sum(1)
        reward = pick_place_reward(w, reach, lifted, place, in_bin, self.episode_success.float(), remaining, rate,
                                   size)
        self.extras.setdefault("log", {}).update({
            "Episode_Reward/reach": reach.mean(), "Episode_Reward/lifted": lifted.mean(),
            "Episode_Reward/place": place.mean(), "Episode_Reward/in_bin": in_bin.mean()})
        return reward

    def _get_dones(self) -> tuple[torch.Tensor, torch.Tensor]:
        in_bin = self.in_bin()
        self.rest_steps = torch.where(in_bin, self.rest_steps + 1, torch.zeros_like(self.rest_steps))
        success = self.rest_steps >= self.cfg.success_hold_steps
        self.successes |= success
        self.episode_success = success  # read by evaluation after `step` (the reset that follows keeps it)
        pos, _ = self.cube_local()
        fell = pos[:, 2] < -0.05
        time_out = self.episode_length_buf >= self.max_episode_length - 1
        return success | fell, time_out

    def _reset_idx(self, env_ids: Sequence[int] | None):
        if env_ids is None:
            env_ids = self.robot._ALL_INDICES
        env_ids = torch.as_tensor(env_ids, device=self.device, dtype=torch.long)
        self.extras.setdefault("log", {})["Metrics/success_rate"] = self.successes[env_ids].float().mean()
        super()._reset_idx(env_ids)
        k = len(env_ids)
        # robot at its home pose, at rest
        joint_pos = self.robot.data.default_joint_pos.torch[env_ids].clone()
        joint_vel = torch.zeros_like(joint_pos)
        self.robot.write_joint_position_to_sim_index(position=joint_pos, env_ids=env_ids)
        self.robot.write_joint_velocity_to_sim_index(velocity=joint_vel, env_ids=env_ids)
        self.robot.actuators.target_command.set_position_index(value=joint_pos, env_ids=env_ids)
        # the cube at a seeded random pose on the table (the workcell's spawn ranges)
        draws = self._draw(k)
        x = _lerp(self.cfg.cube_spawn_x, draws[:, 0])
        y = _lerp(self.cfg.cube_spawn_y, draws[:, 1])
        yaw = torch.deg2rad(_lerp(self.cfg.cube_spawn_yaw_deg, draws[:, 2]))
        pose = torch.zeros(k, 7, device=self.device)
        pose[:, 0], pose[:, 1], pose[:, 2] = x, y, self.cube_rest_z
        pose[:, :3] += self.scene.env_origins[env_ids]
        pose[:, 5], pose[:, 6] = torch.sin(yaw / 2), torch.cos(yaw / 2)  # xyzw about z
        self.cube.write_root_pose_to_sim_index(root_pose=pose, env_ids=env_ids)
        self.cube.write_root_velocity_to_sim_index(root_velocity=torch.zeros(k, 6, device=self.device),
                                                   env_ids=env_ids)
        # randomization: servo gains, cube mass, command latency
        gains = _lerp(self.cfg.joint_gain_scale, draws[:, 3])[:, None]
        self.robot.write_joint_stiffness_to_sim_index(stiffness=self.default_stiffness[env_ids] * gains,
                                                      env_ids=env_ids)
        self.robot.write_joint_damping_to_sim_index(damping=self.default_damping[env_ids] * gains, env_ids=env_ids)
        if self.default_cube_mass is not None:
            scale = _lerp(self.cfg.cube_mass_scale, draws[:, 4])[:, None]
            self.cube.set_masses_index(masses=self.default_cube_mass[env_ids] * scale, env_ids=env_ids)
        lo, hi = self.cfg.action_latency_steps
        self.latency[env_ids] = (lo + torch.floor(draws[:, 5] * (hi - lo + 1)).long()).clamp(max=hi)
        home = self.robot.data.default_joint_pos.torch[env_ids, :6]
        self.history[env_ids] = home[:, None].expand(-1, self.history.shape[1], -1)
        self.residual[env_ids] = 0
        self.prev_residual[env_ids] = 0
        self.rest_steps[env_ids] = 0
        self.successes[env_ids] = False
        self.bc.reset(env_ids)

    def _draw(self, k: int) -> torch.Tensor:
        """k rows of uniform draws; with fixed seeds, episode j draws from seed eval_seed + j (reproducible)."""
        if not self.cfg.fixed_cube_seeds:
            return torch.rand(k, 6, generator=self.generator).to(self.device)
        rows = []
        for _ in range(k):
            g = torch.Generator().manual_seed(int(self.cfg.seed) + self.next_seed)
            self.next_seed += 1
            rows.append(torch.rand(6, generator=g))
        return torch.stack(rows).to(self.device)


def _lerp(bounds, u: torch.Tensor) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _rotate(xyzw: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q = xyzw[:, :3]
    t = 2 * torch.cross(q, v, dim=1)
    return v + xyzw[:, 3:4] * t + torch.cross(q, t, dim=1)
