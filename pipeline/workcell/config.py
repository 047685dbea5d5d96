"""The `workcell` and `expert` sections of params.yaml: the simulated SO-101 cell and its scripted expert."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.common.sections import Section, Range, Vec2, Vec3, Joint6, Positive

class TableConfig(Section):
    size_xy: Vec2 = (0.6, 0.8)
    center_xy: Vec2 = (0.2, 0.0)
    thickness: Positive = 0.02
    friction: Positive = 0.8


class CubeConfig(Section):
    size: Annotated[float, Field(ge=0.02, le=0.03)] = 0.025  # the task asks for a 2-3 cm cube
    mass: Positive = 0.015
    friction: Positive = 1.5
    torsional_friction: float = Field(0.02, ge=0)
    spawn_x: Range = Range(low=0.16, high=0.24)
    spawn_y: Range = Range(low=-0.08, high=0.08)
    spawn_yaw_deg: Range = Range(low=-45.0, high=45.0)


class BinConfig(Section):
    center_xy: Vec2 = (0.12, 0.17)
    inner_size_xy: Vec2 = (0.09, 0.09)
    wall_height: Positive = 0.03
    wall_thickness: Positive = 0.004


class ServoConfig(Section):
    """Position servos on the six joints (order: shoulder_pan … gripper). STS3215 stall torque is ~2.9 N·m."""

    kp: Joint6 = (60.0, 60.0, 60.0, 30.0, 15.0, 10.0)
    kv: Joint6 = (1.5, 1.5, 1.5, 0.8, 0.4, 0.3)
    torque_limit_nm: Joint6 = (2.9, 2.9, 2.9, 2.9, 2.9, 1.5)
    armature: float = Field(0.005, ge=0)
    frictionloss: float = Field(0.01, ge=0)


class FrontCameraConfig(Section):
    position: Vec3 = (0.62, 0.0, 0.45)
    look_at: Vec3 = (0.12, 0.04, 0.06)
    fovy_deg: Positive = 55.0


class WristCameraConfig(Section):
    # isaaclab_so101's SO101_WRIST_CAMERA_CFG: offset in the gripper link, rolled -45° about its x axis.
    offset_pos: Vec3 = (-0.005, 0.06, -0.062)
    offset_roll_deg: float = -45.0
    fovy_deg: Positive = 60.0


class CamerasConfig(Section):
    width: Annotated[int, Field(ge=32, le=1920)] = 640
    height: Annotated[int, Field(ge=32, le=1080)] = 480
    front: FrontCameraConfig = FrontCameraConfig()
    wrist: WristCameraConfig = WristCameraConfig()


class WorkcellConfig(Section):
    """The simulated SO-101 workcell: the official robot USD, a table, a cube, a bin, two cameras."""

    seed: int = 0
    fps: Annotated[int, Field(ge=1, le=200)] = 30
    physics_substeps: Annotated[int, Field(ge=1, le=100)] = 16
    robot_base_yaw_deg: float = 0.0
    episode_seconds: Positive = 12.0
    table: TableConfig = TableConfig()
    cube: CubeConfig = CubeConfig()
    bin: BinConfig = BinConfig()
    servo: ServoConfig = ServoConfig()
    gripper_friction: Positive = 1.2
    cameras: CamerasConfig = CamerasConfig()
    # Render cost on a CPU (Mesa) grows with triangles, not pixels: 1 % of the official meshes (~25 k faces) keeps
    # the silhouettes and makes camera frames ~4x cheaper than 5 %.
    visual_mesh_keep_fraction: Annotated[float, Field(gt=0, le=1)] = 0.01
    # Collider parts split into convex pieces (CoACD) instead of one convex hull: the jaws, where grasps happen.
    decompose_parts: tuple[str, ...] = ("wrist_roll_follower", "moving_jaw")
    decompose_max_faces: Annotated[int, Field(ge=500)] = 4000
    coacd_threshold: Annotated[float, Field(gt=0.01, le=1)] = 0.05


class ExpertConfig(Section):
    """The scripted pick-and-place expert (IK on the MuJoCo model) and how it is evaluated."""

    seed: int = 0
    eval_episodes: Annotated[int, Field(ge=1)] = 20
    min_success_rate: Annotated[float, Field(ge=0, le=1)] = 0.9
    waypoint_noise_m: float = Field(0.002, ge=0)
    action_noise_deg: float = Field(0.3, ge=0)
    tcp_speed_m_s: Positive = 0.2
    tcp_turn_rad_s: Positive = 1.5  # how fast the jaws may re-orient (home pose -> pointing down)
    hover_height_m: Positive = 0.07
    grasp_depth_m: float = 0.0  # TCP height above the cube centre when closing
    # The fixed jaw does not move: close with the cube centre this far from the TCP along the jaw-closing axis, so
    # the moving jaw pushes the cube against the fixed one (measured best of 0.010/0.012/0.014 over 60 seeds).
    grasp_offset_m: float = 0.010
    release_height_m: Positive = 0.06
