"""The simulated SO-101 workcell at run time: MuJoCo stepping, lerobot-style observations, headless camera images.

Actions and `observation.state` use lerobot's `so101_follower` units (see `pipeline.workcell.joints`); the camera
images are HxWx3 uint8 like a real recording's `observation.images.front` / `observation.images.wrist`.
Rendering is headless: MUJOCO_GL=egl (Mesa's software EGL on machines without a GPU) or osmesa.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from pipeline.workcell.config import WorkcellConfig
from pipeline.workcell.joints import LEROBOT_JOINT_NAMES, SIM_JOINTS, lerobot_to_sim, sim_to_lerobot

CAMERAS = ("front", "wrist")
#: `observation.environment_state`: the cube pose as the simulator knows it (metres, unit quaternion w x y z). A real
#: cell has no such sensor unless a tracker (fiducial, detector) supplies it; policies that read it are sim baselines.
ENVIRONMENT_STATE_NAMES = ("cube_x", "cube_y", "cube_z", "cube_qw", "cube_qx", "cube_qy", "cube_qz")


@dataclass(frozen=True)
class CubePose:
    x: float
    y: float
    yaw: float  # radians


class Workcell:
    """One SO-101 + table + cube + bin, loaded from a compiled `workcell.xml` (see `pipeline.workcell.build`)."""

    def __init__(self, xml_path: str | Path, cfg: WorkcellConfig):
        xml_path = Path(xml_path)
        if not xml_path.is_file():
            raise FileNotFoundError(f"no compiled workcell at {xml_path}: materialize the `sim_workcell` asset first")
        self.cfg = cfg
        self.model = mujoco.MjModel.from_xml_path(str(xml_path))
        self.data = mujoco.MjData(self.model)
        self.n_substeps = cfg.physics_substeps
        self.control_dt = 1.0 / cfg.fps
        #: qpos / qvel indices of the six SO-101 joints, in SIM_JOINTS order
        self.joint_qpos_index = np.array([self.model.joint(n).qposadr[0] for n in SIM_JOINTS])
        self.joint_dof_index = np.array([self.model.joint(n).dofadr[0] for n in SIM_JOINTS])
        self._act = np.array([self.model.actuator(n).id for n in LEROBOT_JOINT_NAMES])
        cube_joint = self.model.joint("cube_free_joint")
        self._cube_q = cube_joint.qposadr[0]
        self._cube_v = cube_joint.dofadr[0]
        self._renderer: mujoco.Renderer | None = None
        self.time_step = 0

    # --- episode control -------------------------------------------------------------------------------------
    def sample_cube_pose(self, rng: np.random.Generator) -> CubePose:
        c = self.cfg.cube
        return CubePose(
            x=float(rng.uniform(c.spawn_x.low, c.spawn_x.high)),
            y=float(rng.uniform(c.spawn_y.low, c.spawn_y.high)),
            yaw=math.radians(float(rng.uniform(c.spawn_yaw_deg.low, c.spawn_yaw_deg.high))),
        )

    def reset(self, seed: int) -> CubePose:
        """Home pose, cube at a pose drawn from `seed`; returns that pose."""
        from isaaclab_so101.constants import HOME_JOINT_POS

        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        home = np.array([HOME_JOINT_POS[n] for n in SIM_JOINTS])
        self.data.qpos[self.joint_qpos_index] = home
        self.data.ctrl[self._act] = home
        pose = self.sample_cube_pose(rng)
        half = self.cfg.cube.size / 2
        self.data.qpos[self._cube_q:self._cube_q + 3] = (pose.x, pose.y, half)
        self.data.qpos[self._cube_q + 3:self._cube_q + 7] = (math.cos(pose.yaw / 2), 0, 0, math.sin(pose.yaw / 2))
        mujoco.mj_forward(self.model, self.data)
        self.time_step = 0
        return pose

    def step(self, action: np.ndarray) -> None:
        """Apply one lerobot action (6 joint targets in so101_follower units) for one control period."""
        target = lerobot_to_sim(np.asarray(action, dtype=np.float64))
        lo, hi = self.model.actuator_ctrlrange[self._act].T
        self.data.ctrl[self._act] = np.clip(target, lo, hi)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self.time_step += 1

    # --- readings --------------------------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        """Measured joint angles, simulator radians."""
        return self.data.qpos[self.joint_qpos_index].copy()

    def state(self) -> np.ndarray:
        """`observation.state` in so101_follower units (float32)."""
        return sim_to_lerobot(self.joint_positions()).astype(np.float32)

    def cube_position(self) -> np.ndarray:
        return self.data.qpos[self._cube_q:self._cube_q + 3].copy()

    def cube_quat(self) -> np.ndarray:
        """Cube orientation (w, x, y, z)."""
        return self.data.qpos[self._cube_q + 3:self._cube_q + 7].copy()

    def cube_speed(self) -> float:
        return float(np.linalg.norm(self.data.qvel[self._cube_v:self._cube_v + 3]))

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        site = self.data.site("tcp")
        return site.xpos.copy(), site.xmat.reshape(3, 3).copy()

    def cube_in_bin(self) -> bool:
        """Success: the cube rests inside the bin's walls, below its rim."""
        b = self.cfg.bin
        p = self.cube_position()
        half = self.cfg.cube.size / 2
        inside = all(abs(p[i] - b.center_xy[i]) < b.inner_size_xy[i] / 2 for i in range(2))
        below_rim = p[2] < b.wall_thickness + b.wall_height
        return bool(inside and below_rim and p[2] > 0 and self.cube_speed() < 0.05 and p[2] < half + 0.02)

    def environment_state(self) -> np.ndarray:
        """`observation.environment_state` (see ENVIRONMENT_STATE_NAMES), float32."""
        return np.concatenate([self.cube_position(), self.cube_quat()]).astype(np.float32)

    def observation(self, with_images: bool = True) -> dict[str, np.ndarray]:
        obs = {"observation.state": self.state(), "observation.environment_state": self.environment_state()}
        if with_images:
            for cam in CAMERAS:
                obs[f"observation.images.{cam}"] = self.render(cam)
        return obs

    def render(self, camera: str) -> np.ndarray:
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; the workcell has {CAMERAS}")
        if self._renderer is None:
            cams = self.cfg.cameras
            self._renderer = mujoco.Renderer(self.model, height=cams.height, width=cams.width)
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
