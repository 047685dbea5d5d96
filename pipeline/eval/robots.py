"""The robots an evaluation runs on, all behind lerobot's `Robot` interface (connect, get_observation,
send_action, disconnect), so one loop drives any of them:

  WorkcellRobot the sim workcell (its own MuJoCo physics, renderer and true cube): the *stand-in real robot* of the
                default recipe. It reports joints and the camera images the policy reads, and the cube pose only as
                a cube tracker on a real cell would (`eval.cube_pose: tracked`, what the state-based BC was trained
                on); with `placed` the loop hands the policy the placed pose, as on a real cell without one. The
                outcome is classified from its state into the same failure classes. Its physics is what the twin
                was rebuilt from, never read by the twin.

  TwinRobot     the USD twin, stepped by MuJoCo's C engine on the model Newton builds from `twin.usd` (the same
                conversion MJWarp runs in training). Each episode draws held-out domain randomization from its
                condition seed: cube pose, cube mass, servo gains, command latency, joint-reading noise. Success
                and the failure class come from simulator state. A *sim proxy* for the real cell.
  real SO-101   lerobot's `so101_follower` on a serial port (calibration, `max_relative_target` clamp always on,
                torque released on disconnect); the cube pose the BC policy reads is the placed pose of the
                condition, and the operator labels the outcome.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lerobot.robots.config import RobotConfig
from lerobot.robots.robot import Robot

from pipeline.workcell.joints import LEROBOT_HI, LEROBOT_JOINT_NAMES, LEROBOT_LO, lerobot_to_sim, sim_to_lerobot
from pipeline.workcell.cell import ENVIRONMENT_STATE_NAMES

#: Failure taxonomy shared by simulator signals and operator keys (key in brackets).
OUTCOMES = {"success": "s", "no_grasp": "g", "dropped": "d", "misplaced": "m", "timeout": "t"}


class RobotUnavailable(RuntimeError):
    """The robot cannot be reached or used; nothing was moved."""


@dataclass
class Condition:
    """One initial condition of the paired protocol: a seed and what it draws (the same for both policies)."""

    index: int
    seed: int
    cube_xy: tuple[float, float]
    cube_yaw_deg: float
    gain_scale: float = 1.0
    mass_scale: float = 1.0
    latency_steps: int | None = None  # None: the robot's own (the twin: its identified servo latency)
    joint_noise_units: float = 0.0


def placed_pose(condition: Condition, cube_z: float) -> np.ndarray:
    """The cube pose (x y z qw qx qy qz) the condition places: what a cell without a cube tracker knows."""
    yaw = math.radians(condition.cube_yaw_deg)
    return np.array([*condition.cube_xy, cube_z, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def draw_condition(index: int, seed: int, cell, randomization=None) -> Condition:
    """The condition of `seed`: cube pose in the workcell's spawn ranges; with `randomization` (rl.randomization's
    ranges), the held-out physics draws too."""
    rng = np.random.default_rng(seed)
    c = cell.cube
    x, y = rng.uniform(c.spawn_x.low, c.spawn_x.high), rng.uniform(c.spawn_y.low, c.spawn_y.high)
    yaw = rng.uniform(c.spawn_yaw_deg.low, c.spawn_yaw_deg.high)
    if randomization is None:
        return Condition(index, seed, (float(x), float(y)), float(yaw))
    r = randomization
    if r.joint_gain_scale is None or r.action_latency_steps is None:
        raise ValueError("draw_condition needs concrete servo ranges: pass rl.randomization through "
                         "pipeline.rl.env_cfg.resolve_randomization (the twin's identification) first")
    return Condition(index, seed, (float(x), float(y)), float(yaw),
                     gain_scale=float(rng.uniform(r.joint_gain_scale.low, r.joint_gain_scale.high)),
                     mass_scale=float(rng.uniform(r.cube_mass_scale.low, r.cube_mass_scale.high)),
                     latency_steps=int(rng.integers(r.action_latency_steps[0], r.action_latency_steps[1] + 1)),
                     joint_noise_units=float(r.joint_noise_units))


class SimulatedRobot(Robot):
    """What every simulated robot shares: the lerobot `Robot` parts a simulation has nothing to do for (calibration,
    configuration; the six joint targets as actions), and success and the failure class from simulator state. A
    subclass provides `cube_pos()`, `tcp()`, `in_bin()`, `cube_rest_z`, `bin_centre`, `bin_half` and
    `config.success_hold_steps`, calls `_reset_signals()` when an episode starts and `_update_signals()` after every
    control step."""

    def __init__(self, config: RobotConfig):
        if config.calibration_dir is None:  # a simulation needs no calibration; lerobot's base class wants a folder
            config.calibration_dir = Path(tempfile.gettempdir()) / f"{self.name}_calibration"
        super().__init__(config)

    @property
    def action_features(self) -> dict:
        return {name: float for name in LEROBOT_JOINT_NAMES}

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def _reset_signals(self) -> None:
        self.rest_steps, self.max_lift, self.steps = 0, 0.0, 0
        self.released_at: np.ndarray | None = None  # cube xy when it last left the gripper while lifted
        self._held_lifted = False

    def _update_signals(self) -> None:
        self.steps += 1
        pos = self.cube_pos()
        lift = pos[2] - self.cube_rest_z
        self.max_lift = max(self.max_lift, lift)
        held = np.linalg.norm(self.tcp() - pos) < 0.03
        if self._held_lifted and not held:
            self.released_at = pos[:2].copy()
        self._held_lifted = held and lift > 0.01
        self.rest_steps = self.rest_steps + 1 if self.in_bin() else 0

    @property
    def succeeded(self) -> bool:
        return self.rest_steps >= self.config.success_hold_steps

    @property
    def fell(self) -> bool:
        return self.cube_pos()[2] < -0.05

    def outcome(self) -> str:
        """success, or why not: no_grasp (never lifted 2 cm), timeout (still holding it), misplaced (let go over or
        next to the bin but it is not resting inside), dropped (let go elsewhere)."""
        if self.succeeded:
            return "success"
        if self.max_lift < 0.02:
            return "no_grasp"
        pos = self.cube_pos()
        if np.linalg.norm(self.tcp() - pos) < 0.03 and pos[2] > self.cube_rest_z + 0.005:
            return "timeout"
        near = self.bin_half + 0.03
        spot = self.released_at if self.released_at is not None else pos[:2]
        if np.all(np.abs(spot - self.bin_centre[:2]) < near) or np.all(np.abs(pos[:2] - self.bin_centre[:2]) < near):
            return "misplaced"
        return "dropped"


@RobotConfig.register_subclass("twinloop_twin")
@dataclass(kw_only=True)
class TwinRobotConfig(RobotConfig):
    twin_usd: Path = Path("models/twin/twin.usd")
    fps: int = 30
    physics_dt_s: float | None = None  # None: the step the twin was authored with
    success_hold_steps: int = 10
    home_joint_pos: dict = field(default_factory=dict)  # sim joint name -> rad (default: isaaclab_so101's home)
    report_cube_pose: bool = True  # False: like a real arm, no cube pose (the loop hands the placed pose)


class TwinRobot(SimulatedRobot):
    """The twin as a lerobot robot. `start_episode(condition)` places the cube and draws the episode's physics; each
    `send_action` advances the twin by one control period (1/fps s), so the twin's clock runs with the loop."""

    config_class = TwinRobotConfig
    name = "twinloop_twin"

    def __init__(self, config: TwinRobotConfig):
        super().__init__(config)
        self.config = config
        self._connected = False
        self.rng = np.random.default_rng(0)

    # --- lerobot Robot interface --------------------------------------------------------------------------------
    @property
    def observation_features(self) -> dict:
        cube = ENVIRONMENT_STATE_NAMES if self.config.report_cube_pose else ()
        return {**{name: float for name in LEROBOT_JOINT_NAMES}, **{n: float for n in cube}}

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        import mujoco
        from isaaclab_so101.constants import HOME_JOINT_POS, TCP_OFFSET

        from pipeline.rl.env_cfg import bin_geometry
        from pipeline.workcell.joints import SIM_JOINTS
        from pipeline.twin.physics import load_twin, make_solver
        from pipeline.twin.identify import cube_free_joint, servo_indices

        usd = Path(self.config.twin_usd)
        if not usd.is_file():
            raise RobotUnavailable(f"no twin at {usd}: materialize `usd_twin` first")
        twin = load_twin(usd, "cpu", worlds=1)
        solver = make_solver(twin)
        m, d = solver.mj_model, solver.mj_data
        dt = self.config.physics_dt_s or twin.physics_dt  # None: the step the twin was authored with
        m.opt.timestep = dt
        self.solver, self.m, self.d = solver, m, d  # the solver owns the model: keep it alive
        self.substeps = max(1, round(1 / (self.config.fps * dt)))
        self.servo = servo_indices(m)
        from pipeline.rl.env_cfg import twin_latency_steps

        self.own_latency = twin_latency_steps(usd)  # the twin's identified servo latency
        found = cube_free_joint(m, d, twin)
        if found is None:
            raise RobotUnavailable(f"{usd} has no rigid `cube`: the pick-and-place evaluation needs one")
        self.cube_adr, self.cube_authored = found
        self.cube_body = int(m.jnt_bodyid[next(j for j in range(m.njnt) if m.jnt_qposadr[j] == self.cube_adr)])
        self.gripper_body = next(b for b in range(m.nbody)
                                 if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) or "").endswith("gripper"))
        home = self.config.home_joint_pos or HOME_JOINT_POS
        self.home = np.array([home[j] for j in SIM_JOINTS])
        self.tcp_offset = np.asarray(TCP_OFFSET, dtype=np.float64)
        centre, half, rim = bin_geometry(usd)
        self.bin_centre, self.bin_half, self.bin_rim = np.asarray(centre), np.asarray(half), float(rim)
        self.cube_rest_z = float(self.cube_authored[2])
        self.default_gains = (m.actuator_gainprm[:, 0].copy(), m.actuator_biasprm[:, 1:3].copy())
        self.default_mass = (float(m.body_mass[self.cube_body]), m.body_inertia[self.cube_body].copy())
        self._connected = True
        self.start_episode(Condition(0, 0, tuple(self.cube_authored[:2]), 0.0))

    def disconnect(self) -> None:
        self._connected = False

    def get_observation(self) -> dict:
        units = sim_to_lerobot(self.d.qpos[self.servo["qpos"]])
        if self.condition.joint_noise_units > 0:
            units = units + self.rng.normal(0.0, self.condition.joint_noise_units, 6)
        obs = dict(zip(LEROBOT_JOINT_NAMES, units.astype(float)))
        if self.config.report_cube_pose:
            obs.update(zip(ENVIRONMENT_STATE_NAMES, self.d.qpos[self.cube_adr:self.cube_adr + 7].astype(float)))
        return obs

    def send_action(self, action: dict) -> dict:
        import mujoco

        units = np.clip([action[name] for name in LEROBOT_JOINT_NAMES], LEROBOT_LO, LEROBOT_HI)
        self.pending.insert(0, lerobot_to_sim(units))
        target = self.pending.pop() if len(self.pending) > self.latency_steps else self.pending[-1]
        self.d.ctrl[self.servo["actuator"]] = target
        mujoco.mj_step(self.m, self.d, nstep=self.substeps)
        if not np.all(np.isfinite(self.d.qpos)):
            raise RuntimeError("the twin diverged (non-finite state)")
        self._update_signals()
        return dict(zip(LEROBOT_JOINT_NAMES, units.astype(float)))

    # --- episodes and simulator signals -------------------------------------------------------------------------
    def start_episode(self, condition: Condition) -> None:
        """Robot at home and at rest, cube at the condition's pose, the condition's physics draws applied."""
        import mujoco

        m, d = self.m, self.d
        self.condition = condition
        self.rng = np.random.default_rng(condition.seed + 1)  # joint-reading noise, reproducible per condition
        kp, bias = self.default_gains
        m.actuator_gainprm[:, 0] = kp * condition.gain_scale
        m.actuator_biasprm[:, 1:3] = bias * condition.gain_scale
        mass, inertia = self.default_mass
        m.body_mass[self.cube_body] = mass * condition.mass_scale
        m.body_inertia[self.cube_body] = inertia * condition.mass_scale
        mujoco.mj_resetData(m, d)
        d.qpos[self.servo["qpos"]] = self.home
        d.ctrl[self.servo["actuator"]] = self.home
        d.qpos[self.cube_adr:self.cube_adr + 7] = placed_pose(condition, self.cube_rest_z)
        mujoco.mj_forward(m, d)
        self.latency_steps = self.own_latency if condition.latency_steps is None else condition.latency_steps
        self.pending = [self.home.copy()] * self.latency_steps
        self._reset_signals()

    def tcp(self) -> np.ndarray:
        rot = self.d.xmat[self.gripper_body].reshape(3, 3)
        return self.d.xpos[self.gripper_body] + rot @ self.tcp_offset

    def cube_pos(self) -> np.ndarray:
        return self.d.qpos[self.cube_adr:self.cube_adr + 3].copy()

    def in_bin(self) -> bool:
        """The env's success test: inside the bin's footprint, below its rim, slow, and released."""
        pos = self.cube_pos()
        inside = bool(np.all(np.abs(pos[:2] - self.bin_centre[:2]) < self.bin_half))
        below_rim = pos[2] < self.bin_rim + 0.02
        slow = np.linalg.norm(self._cube_lin_vel()) < 0.05
        released = np.linalg.norm(self.tcp() - pos) > 0.03
        return inside and below_rim and slow and released

    def _cube_lin_vel(self) -> np.ndarray:
        import mujoco

        vel = np.zeros(6)
        mujoco.mj_objectVelocity(self.m, self.d, mujoco.mjtObj.mjOBJ_BODY, self.cube_body, vel, 0)
        return vel[3:]

    def render(self, width: int = 320, height: int = 240) -> np.ndarray | None:
        """An RGB frame of the twin's physics (collision shapes: arm, table, bin, cube) from the front, or None
        where no OpenGL context can be made (MUJOCO_GL=egl or osmesa)."""
        import mujoco

        try:
            if getattr(self, "_renderer", None) is None:
                self._colour_geoms()
                self._renderer = mujoco.Renderer(self.m, height, width)
            cam = mujoco.MjvCamera()
            cam.lookat[:] = [0.17, 0.05, 0.05]
            cam.distance, cam.azimuth, cam.elevation = 0.75, 200.0, -35.0
            self._renderer.update_scene(self.d, camera=cam)
            return self._renderer.render().copy()
        except Exception:  # no GL context on this machine: the report says so
            self._renderer = None
            return None

    def _colour_geoms(self) -> None:
        import mujoco

        for g in range(self.m.ngeom):
            body = mujoco.mj_id2name(self.m, mujoco.mjtObj.mjOBJ_BODY, int(self.m.geom_bodyid[g])) or ""
            name = (mujoco.mj_id2name(self.m, mujoco.mjtObj.mjOBJ_GEOM, g) or "").lower()
            if int(self.m.geom_bodyid[g]) == self.cube_body:
                rgba = (0.85, 0.1, 0.1, 1)
            elif "bin" in name:
                rgba = (0.15, 0.35, 0.85, 1)
            elif "table" in name or self.m.geom_bodyid[g] == 0:
                rgba = (0.8, 0.75, 0.65, 1)
            else:
                rgba = (0.95, 0.6, 0.1, 1) if "robot" in body.lower() or body else (0.6, 0.6, 0.6, 1)
            self.m.geom_rgba[g] = rgba


@RobotConfig.register_subclass("twinloop_workcell")
@dataclass(kw_only=True)
class WorkcellRobotConfig(RobotConfig):
    workcell_xml: Path = Path("models/workcell/workcell.xml")
    workcell: object = None  # the recipe's WorkcellConfig (cube, bin, cameras, fps)
    render_cameras: tuple[str, ...] = ("front", "wrist")  # rendered into every observation like a real arm's cameras
    success_hold_steps: int = 10
    # the cube's pose as a tracker on the cell would report it (mocap, a marker on the cube); False: none, as a
    # real arm without one (the loop then hands the policy the placed pose, frozen for the whole episode)
    report_cube_pose: bool = False


class WorkcellRobot(SimulatedRobot):
    """The sim workcell as a lerobot robot: the stand-in for the user's real SO-101. It reports what a real arm
    reports (joint positions in so101_follower units, camera images) and, with `report_cube_pose`, what a cube
    tracker would add; each `send_action` advances the workcell by one control period."""

    config_class = WorkcellRobotConfig
    name = "twinloop_workcell"

    def __init__(self, config: WorkcellRobotConfig):
        super().__init__(config)
        self.config = config
        self.cell = None

    @property
    def observation_features(self) -> dict:
        cams = self.config.workcell.cameras
        cube = ENVIRONMENT_STATE_NAMES if self.config.report_cube_pose else ()
        return {**{name: float for name in LEROBOT_JOINT_NAMES}, **{n: float for n in cube},
                **{cam: (cams.height, cams.width, 3) for cam in self.config.render_cameras}}

    @property
    def is_connected(self) -> bool:
        return self.cell is not None

    def connect(self, calibrate: bool = True) -> None:
        from pipeline.workcell.cell import CAMERAS, Workcell

        unknown = sorted(set(self.config.render_cameras) - set(CAMERAS))
        if unknown:
            raise RobotUnavailable(f"the workcell has no camera {unknown}; it has {list(CAMERAS)}")
        try:
            self.cell = Workcell(self.config.workcell_xml, self.config.workcell)
        except FileNotFoundError as exc:
            raise RobotUnavailable(str(exc)) from None
        cfg = self.config.workcell
        self.cube_rest_z = cfg.cube.size / 2
        self.bin_centre = np.array([*cfg.bin.center_xy, cfg.bin.wall_thickness])
        self.bin_half = np.asarray(cfg.bin.inner_size_xy, dtype=np.float64) / 2
        self.start_episode(Condition(0, 0, (float(np.mean([cfg.cube.spawn_x.low, cfg.cube.spawn_x.high])),
                                            float(np.mean([cfg.cube.spawn_y.low, cfg.cube.spawn_y.high]))), 0.0))

    def disconnect(self) -> None:
        if self.cell is not None:
            self.cell.close()
        self.cell = None

    def get_observation(self) -> dict:
        obs = dict(zip(LEROBOT_JOINT_NAMES, self.cell.state().astype(float)))
        if self.config.report_cube_pose:
            obs.update(zip(ENVIRONMENT_STATE_NAMES, self.cell.environment_state().astype(float)))
        for cam in self.config.render_cameras:
            obs[cam] = self.cell.render(cam)
        return obs

    def send_action(self, action: dict) -> dict:
        units = np.clip([action[name] for name in LEROBOT_JOINT_NAMES], LEROBOT_LO, LEROBOT_HI)
        self.cell.step(units)
        if not np.all(np.isfinite(self.cell.data.qpos)):
            raise RuntimeError("the workcell diverged (non-finite state)")
        self._update_signals()
        return dict(zip(LEROBOT_JOINT_NAMES, units.astype(float)))

    def start_episode(self, condition: Condition) -> None:
        """Robot at home, cube at rest at the condition's pose (the workcell's own physics: nothing is drawn)."""
        import mujoco

        self.condition = condition
        self.cell.reset(condition.seed)
        m, d = self.cell.model, self.cell.data
        joint = m.joint("cube_free_joint")
        q, v = int(joint.qposadr[0]), int(joint.dofadr[0])
        d.qpos[q:q + 7] = placed_pose(condition, self.cube_rest_z)
        d.qvel[v:v + 6] = 0.0
        mujoco.mj_forward(m, d)
        self._reset_signals()

    # --- simulator signals (SimulatedRobot) ------------------------------------------------------------------------
    def cube_pos(self) -> np.ndarray:
        return self.cell.cube_position()

    def tcp(self) -> np.ndarray:
        return self.cell.tcp_pose()[0]

    def in_bin(self) -> bool:
        """The twin's success test on the workcell's state: resting in the bin and released."""
        return self.cell.cube_in_bin() and float(np.linalg.norm(self.tcp() - self.cube_pos())) > 0.03

    def render(self, width: int = 320, height: int = 240) -> np.ndarray | None:
        """The front camera's frame (what a report shows of a real cell), or None without a GL context."""
        try:
            return self.cell.render("front")
        except Exception:  # no GL context on this machine: the report says so
            return None


@dataclass(kw_only=True)
class RealArmSettings:
    port: str
    robot_id: str = "twinloop_follower"
    calibration_dir: str = ""
    max_relative_target: float = 10.0
    cameras: dict = field(default_factory=dict)  # name -> {index_or_path, width, height, fps}


def real_robot_from_recipe(recipe) -> Robot:
    """The follower `eval.real` describes (its cube height is the loop's business, not the arm's)."""
    return make_real_robot(RealArmSettings(**recipe.eval.real.model_dump(exclude={"cube_z_m"})))


def make_real_robot(settings: RealArmSettings) -> Robot:
    """lerobot's so101_follower for this port, in Twinloop's joint units (-100..100, gripper 0..100); refuses, before
    touching anything, when the port does not exist or the clamp is off."""
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    if not settings.port:
        raise RobotUnavailable("eval.real.port is empty: set the follower's serial port (e.g. /dev/ttyACM0; "
                               "`lerobot-find-port` tells which)")
    if not Path(settings.port).exists():
        raise RobotUnavailable(f"serial port {settings.port} does not exist: is the follower plugged in and "
                               "powered? (`lerobot-find-port` lists ports)")
    if not settings.max_relative_target or settings.max_relative_target <= 0:
        raise RobotUnavailable("eval.real.max_relative_target must be > 0: the per-step clamp is always on for real "
                               "arms")
    cameras = {}
    if settings.cameras:
        from lerobot.cameras.opencv import OpenCVCameraConfig

        cameras = {name: OpenCVCameraConfig(**spec) for name, spec in settings.cameras.items()}
    config = SO101FollowerConfig(port=settings.port, id=settings.robot_id,
                                 calibration_dir=Path(settings.calibration_dir) if settings.calibration_dir else None,
                                 max_relative_target=settings.max_relative_target, use_degrees=False,
                                 disable_torque_on_disconnect=True, cameras=cameras)
    return SO101Follower(config)
