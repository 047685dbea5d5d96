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

from scipy.spatial.transform import Rotation, Slerp

from pipeline.workcell.config import ExpertConfig
from pipeline.workcell.joints import LIMITS_HI_RAD, LIMITS_LO_RAD, sim_to_lerobot
from pipeline.workcell.cell import Workcell

GRIPPER_OPEN = 70.0  # so101_follower gripper units (0 = closed, 100 = open)
GRIPPER_CLOSED = 0.0


@dataclass(frozen=True)
class Waypoint:
    position: np.ndarray  # TCP target, world frame (m)
    yaw: float  # jaw closing direction about world z (rad)
    gripper: float  # so101_follower gripper units
    hold_s: float = 0.0  # wait here after arriving


@dataclass(frozen=True)
class Segment:
    """Move the TCP from `start` to `end` (position and orientation) between times t0 and t1."""

    start: np.ndarray
    end: np.ndarray
    rotations: Slerp  # TCP orientation over the segment's progress 0..1
    t0: float
    t1: float
    gripper_start: float  # so101_follower units, ramped like a hand on the leader arm would
    gripper_end: float


def top_down(yaw: float) -> np.ndarray:
    """TCP orientation with the jaws pointing down (gripper z up) and closing along `yaw` about world z."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class ScriptedExpert:
    def __init__(self, workcell: Workcell, cfg: ExpertConfig, seed: int):
        self.wc = workcell
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self._ik_data = mujoco.MjData(workcell.model)
        self._site = workcell.model.site("tcp").id
        self._arm_dofs = workcell.joint_dof_index[:5]  # IK moves the five arm joints; the gripper is commanded
        self._qpos_index = workcell.joint_qpos_index
        self._segments: list[Segment] = []

    # --- planning --------------------------------------------------------------------------------------------
    def plan(self) -> None:
        """Waypoints for the cube where it lies now. Call after `Workcell.reset`."""
        cfg, wc = self.cfg, self.wc
        cube = wc.cube_position()
        yaw = self._grasp_yaw(cube, _yaw_of(wc.cube_quat()))
        along = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        noise = lambda: self.rng.normal(0.0, cfg.waypoint_noise_m, 3)  # noqa: E731
        grasp = cube - cfg.grasp_offset_m * along + np.array([0, 0, cfg.grasp_depth_m]) + noise() * [1, 1, 0.3]
        hover = grasp + [0, 0, cfg.hover_height_m]
        b = wc.cfg.bin
        drop = np.array([b.center_xy[0], b.center_xy[1], b.wall_height + cfg.release_height_m]) + noise()
        tcp, tcp_rot = wc.tcp_pose()
        plan = [
            Waypoint(hover, yaw, GRIPPER_OPEN),
            Waypoint(grasp, yaw, GRIPPER_OPEN, hold_s=0.2),
            Waypoint(grasp, yaw, GRIPPER_CLOSED, hold_s=0.5),
            Waypoint(hover + [0, 0, 0.03], yaw, GRIPPER_CLOSED),
            Waypoint(drop, yaw, GRIPPER_CLOSED, hold_s=0.2),
            Waypoint(drop, yaw, GRIPPER_OPEN, hold_s=0.4),
            Waypoint(drop + [0, 0, 0.05], yaw, GRIPPER_OPEN, hold_s=1.0),
        ]
        self._segments = []
        t, pos, rot, grip = 0.0, tcp, Rotation.from_matrix(tcp_rot), GRIPPER_OPEN
        for wp in plan:
            target = Rotation.from_matrix(top_down(wp.yaw))
            # slow enough for the distance and, from the home pose, for the wrist to turn the jaws down
            move = max(0.25, float(np.linalg.norm(wp.position - pos)) / cfg.tcp_speed_m_s,
                       (rot.inv() * target).magnitude() / cfg.tcp_turn_rad_s)
            slerp = Slerp([0.0, 1.0], Rotation.concatenate([rot, target]))
            self._segments.append(Segment(pos, wp.position, slerp, t, t + move, grip, wp.gripper))
            t += move
            if wp.hold_s:
                hold = Slerp([0.0, 1.0], Rotation.concatenate([target, target]))
                self._segments.append(Segment(wp.position, wp.position, hold, t, t + wp.hold_s, wp.gripper,
                                              wp.gripper))
                t += wp.hold_s
            pos, rot, grip = wp.position, target, wp.gripper
        self.duration_s = t
        self._q = self.wc.joint_positions()

    def _grasp_yaw(self, cube: np.ndarray, cube_yaw: float) -> float:
        """Of the four jaw directions that square up with the cube's faces, the one the wrist reaches best."""
        best, best_cost = cube_yaw, math.inf
        for k in range(4):
            yaw = cube_yaw + k * math.pi / 2
            q, err = self._ik(cube + [0, 0, self.cfg.hover_height_m], top_down(yaw), self.wc.joint_positions())
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
        seg = next((s for s in self._segments if s.t0 <= t < s.t1), self._segments[-1])
        s = min(1.0, max(0.0, (t - seg.t0) / (seg.t1 - seg.t0)))
        s = 0.5 - 0.5 * math.cos(math.pi * s)  # smooth start and stop
        self._q, _ = self._ik(seg.start + s * (seg.end - seg.start), seg.rotations(s).as_matrix(), self._q)
        executed = self._q.copy()  # a human's hand is not exact either: noise on the arm joints
        executed[:5] += self.rng.normal(0.0, math.radians(self.cfg.action_noise_deg), 5)
        executed[:5] = np.clip(executed[:5], LIMITS_LO_RAD[:5], LIMITS_HI_RAD[:5])  # a real arm stops at its limits
        action = sim_to_lerobot(executed)
        action[5] = seg.gripper_start + s * (seg.gripper_end - seg.gripper_start)
        return action.astype(np.float32)

    def _ik(self, position: np.ndarray, want: np.ndarray, q_start: np.ndarray, iters: int = 60):
        """Joint angles putting the TCP at `position` with orientation `want` (3x3), damped least squares.
        Returns (q, remaining position error in m)."""
        m, d = self.wc.model, self._ik_data
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
            err_norm = float(np.linalg.norm(e_pos))
            if err_norm < 2e-4 and np.linalg.norm(e_rot) < 1e-2:
                break
            # orientation weighs less than position: the 5-DoF arm cannot always satisfy both exactly
            err = np.concatenate([e_pos, 0.05 * e_rot])
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

