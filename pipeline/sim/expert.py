"""A scripted pick-and-place expert for the SO-101 workcell: Cartesian waypoints + damped-least-squares IK.

The plan is top-down: hover over the cube, descend with the jaws aligned to a cube face, close, lift, carry over
the bin, lower, open, retreat. Each control step interpolates the TCP along the plan and solves IK (on a scratch
copy of the MuJoCo model) for the five arm joints; the gripper is commanded directly. Seeded noise perturbs the
waypoints and the executed actions, so the demos it records differ like a human's do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from pipeline.config import ExpertConfig
from pipeline.sim.joints import LIMITS_HI_RAD, LIMITS_LO_RAD, sim_to_lerobot
from pipeline.sim.workcell import Workcell

GRIPPER_OPEN = 70.0  # so101_follower gripper units (0 = closed, 100 = open)
GRIPPER_CLOSED = 0.0
# The fixed jaw does not move: close on the cube with its centre this far from the TCP (gripper x axis, metres)
# so the moving jaw pushes the cube against the fixed one without the fixed jaw landing on the cube.
GRASP_OFFSET_X = 0.012


@dataclass(frozen=True)
class Waypoint:
    position: np.ndarray  # TCP target, world frame (m)
    yaw: float  # jaw closing direction about world z (rad)
    gripper: float  # so101_follower gripper units
    hold_s: float = 0.0  # wait here after arriving


class ScriptedExpert:
    def __init__(self, workcell: Workcell, cfg: ExpertConfig, seed: int):
        self.wc = workcell
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self._ik_data = mujoco.MjData(workcell.model)
        self._site = workcell.model.site("tcp").id
        self._arm_dofs = workcell.joint_dof_index[:5]  # IK moves the five arm joints; the gripper is commanded
        self._qpos_index = workcell.joint_qpos_index
        self._segments: list[tuple[np.ndarray, np.ndarray, float, float, float, float]] = []

    # --- planning --------------------------------------------------------------------------------------------
    def plan(self) -> None:
        """Waypoints for the cube where it lies now. Call after `Workcell.reset`."""
        cfg, wc = self.cfg, self.wc
        cube = wc.cube_position()
        cube_yaw = _yaw_of(wc.cube_quat())
        yaw = self._grasp_yaw(cube, cube_yaw)
        along = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        noise = lambda: self.rng.normal(0.0, cfg.waypoint_noise_m, 3)  # noqa: E731
        grasp = cube - GRASP_OFFSET_X * along + np.array([0, 0, cfg.grasp_depth_m]) + noise() * [1, 1, 0.3]
        hover = grasp + [0, 0, cfg.hover_height_m]
        b = wc.cfg.bin
        drop = np.array([b.center_xy[0], b.center_xy[1], b.wall_height + cfg.release_height_m]) + noise()
        tcp, _ = wc.tcp_pose()
        plan = [
            Waypoint(tcp, yaw, GRIPPER_OPEN),
            Waypoint(hover, yaw, GRIPPER_OPEN),
            Waypoint(grasp, yaw, GRIPPER_OPEN, hold_s=0.2),
            Waypoint(grasp, yaw, GRIPPER_CLOSED, hold_s=0.5),
            Waypoint(hover + [0, 0, 0.03], yaw, GRIPPER_CLOSED),
            Waypoint(drop, yaw, GRIPPER_CLOSED, hold_s=0.2),
            Waypoint(drop, yaw, GRIPPER_OPEN, hold_s=0.4),
            Waypoint(drop + [0, 0, 0.05], yaw, GRIPPER_OPEN, hold_s=1.0),
        ]
        self._segments = []
        t = 0.0
        for a, b_ in zip(plan[:-1], plan[1:]):
            move = max(0.25, float(np.linalg.norm(b_.position - a.position)) / cfg.tcp_speed_m_s)
            self._segments.append((a.position, b_.position, t, t + move, a.yaw, b_.gripper))
            t += move
            if b_.hold_s:
                self._segments.append((b_.position, b_.position, t, t + b_.hold_s, b_.yaw, b_.gripper))
                t += b_.hold_s
        self.duration_s = t
        self._q = self.wc.joint_positions()

    def _grasp_yaw(self, cube: np.ndarray, cube_yaw: float) -> float:
        """Of the four jaw directions that square up with the cube's faces, the one the wrist reaches best."""
        best, best_cost = cube_yaw, math.inf
        for k in range(4):
            yaw = cube_yaw + k * math.pi / 2
            q, err = self._ik(cube + [0, 0, self.cfg.hover_height_m], yaw, self.wc.joint_positions())
            margin = min(q[4] - LIMITS_LO_RAD[4], LIMITS_HI_RAD[4] - q[4])
            cost = err * 100 + abs(q[4]) * 0.1 - min(margin, 0.3)
            if cost < best_cost:
                best, best_cost = yaw, cost
        return best

    # --- acting ----------------------------------------------------------------------------------------------
    def done(self) -> bool:
        return self.wc.time_step * self.wc.control_dt >= self.duration_s

    def act(self) -> np.ndarray:
        """The next action (so101_follower units) for the current control step."""
        t = self.wc.time_step * self.wc.control_dt
        seg = next((s for s in self._segments if s[2] <= t < s[3]), self._segments[-1])
        start, end, t0, t1, yaw, gripper = seg
        s = min(1.0, max(0.0, (t - t0) / (t1 - t0)))
        s = 0.5 - 0.5 * math.cos(math.pi * s)  # smooth start and stop
        target = start + s * (end - start)
        self._q, _ = self._ik(target, yaw, self._q)
        action = sim_to_lerobot(self._q)
        action[5] = gripper
        action[:5] += np.degrees(self.rng.normal(0.0, math.radians(self.cfg.action_noise_deg), 5)) * (200 / 220)
        return action.astype(np.float32)

    def _ik(self, position: np.ndarray, yaw: float, q_start: np.ndarray, iters: int = 60) -> tuple[np.ndarray, float]:
        """Joint angles putting the TCP at `position`, jaws pointing down, closing along `yaw` (DLS)."""
        m, d = self.wc.model, self._ik_data
        want = np.array([
            [math.cos(yaw), -math.sin(yaw), 0.0],
            [math.sin(yaw), math.cos(yaw), 0.0],
            [0.0, 0.0, 1.0],
        ])  # gripper z up = jaws (gripper -z) down
        q = np.array(q_start, dtype=np.float64)
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        err_norm = math.inf
        for _ in range(iters):
            d.qpos[self._qpos_index] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            pos = d.site_xpos[self._site]
            rot = d.site_xmat[self._site].reshape(3, 3)
            e_pos = position - pos
            e_rot = 0.5 * sum(np.cross(rot[:, i], want[:, i]) for i in range(3))
            err = np.concatenate([e_pos, 0.05 * e_rot])
            err_norm = float(np.linalg.norm(e_pos))
            if err_norm < 2e-4 and np.linalg.norm(e_rot) < 1e-2:
                break
            mujoco.mj_jacSite(m, d, jacp, jacr, self._site)
            jac = np.vstack([jacp[:, self._arm_dofs], 0.05 * jacr[:, self._arm_dofs]])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + 1e-5 * np.eye(6), err)
            q[:5] = np.clip(q[:5] + np.clip(dq, -0.2, 0.2), LIMITS_LO_RAD[:5], LIMITS_HI_RAD[:5])
        return q, err_norm


def _yaw_of(quat_wxyz: np.ndarray) -> float:
    w, x, y, z = quat_wxyz
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    cube_final: tuple[float, float, float]


def run_expert_episode(workcell: Workcell, cfg: ExpertConfig, seed: int, on_step=None) -> EpisodeResult:
    """Reset with `seed`, let the expert act until its plan ends (or the episode time runs out).
    `on_step(obs_before, action)` is called each step — the hook demo recording uses."""
    workcell.reset(seed)
    expert = ScriptedExpert(workcell, cfg, seed)
    expert.plan()
    max_steps = int(workcell.cfg.episode_seconds * workcell.cfg.fps)
    while not expert.done() and workcell.time_step < max_steps:
        action = expert.act()
        if on_step is not None:
            on_step(action)
        workcell.step(action)
    return EpisodeResult(seed, workcell.cube_in_bin(), workcell.time_step, tuple(workcell.cube_position().round(4)))

