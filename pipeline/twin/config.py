"""The `twin` section of params.yaml: the OpenUSD twin and how it is validated."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.common.sections import Joint6, Positive, Range, Section


class ServoPriorConfig(Section):
    """What is known about an SO-101's servos before any recording: the datasheet prior identification starts from
    (and the twin's drives when nothing is identified). Per joint, shoulder_pan … gripper.

    Sources: kp / kv are isaaclab_so101's `SO101_CFG` gains ("gear-aware gains from the NVIDIA workshop"); the
    torque limit is the Feetech STS3215's stall torque (2.94 N·m at 12 V) on every joint, the gripper's included;
    armature is the order of a 1:345-geared rotor's reflected inertia; friction loss the order of a hobby servo's
    gear train. None of it is read from the stand-in robot (`workcell.servo`): that is what identification is for."""

    kp: Joint6 = (55.0, 30.0, 25.0, 12.0, 7.0, 4.0)  # N·m/rad
    kv: Joint6 = (0.7, 0.8, 0.7, 0.5, 0.5, 0.3)  # N·m·s/rad
    torque_limit_nm: Joint6 = (2.94, 2.94, 2.94, 2.94, 2.94, 2.94)
    armature: Joint6 = (0.01, 0.01, 0.01, 0.01, 0.01, 0.01)  # kg·m²
    frictionloss: Joint6 = (0.02, 0.02, 0.02, 0.02, 0.02, 0.02)  # N·m
    latency_steps: Annotated[int, Field(ge=0)] = 0  # frames between a command and its servo target


class IdentifyConfig(Section):
    """Servo identification from the demos (pipeline/twin/identify.py): open-loop replay error of recorded actions
    vs recorded states, minimized by scipy's least_squares within physical bounds around the prior."""

    enabled: bool = True
    fit: tuple[str, ...] = ("kp", "kv", "armature", "frictionloss", "offset", "scale", "gripper_torque")
    heldout_episodes: Annotated[int, Field(ge=1)] = 2  # never fitted: the before/after figures are measured on them
    real_heldout_episodes: Annotated[int, Field(ge=1)] = 1  # of twin.real_recording (its own profile)
    train_episodes: Annotated[int, Field(ge=0)] = 4  # fitted on (0: every episode not held out)
    seed: int = 0  # which episodes are held out
    max_latency_steps: Annotated[int, Field(ge=0, le=10)] = 2  # latencies 0..N frames are tried
    latency_scan_evaluations: Annotated[int, Field(ge=1)] = 8  # optimizer steps per latency candidate
    max_evaluations: Annotated[int, Field(ge=1)] = 15  # optimizer steps of the final fit (from the best candidate)
    episode_refit_evaluations: Annotated[int, Field(ge=1)] = 4  # per training episode, for the spread
    # bounds: the physically plausible around the prior
    gain_range_factor: Annotated[float, Field(gt=1)] = 4.0  # kp, kv within prior / f .. prior x f
    armature_range: Range = Range(low=1e-4, high=0.05)
    frictionloss_range: Range = Range(low=1e-4, high=0.3)
    gripper_torque_range: Range = Range(low=0.2, high=3.0)
    max_offset_deg: Positive = 8.0  # calibration offset per joint
    max_scale_error: Annotated[float, Field(gt=0, lt=0.5)] = 0.1  # calibration scale within 1 +- this
    # the error model: encoder noise (deg) the residuals are divided by; a robust loss beyond loss_scale_deg (frames
    # where the recording holds what the twin cannot replay, e.g. a gripper stalled on an object the twin lacks)
    noise_deg: Positive = 0.5
    loss: Literal["linear", "soft_l1", "huber", "cauchy"] = "soft_l1"
    loss_scale_deg: Positive = 3.0
    prior_weight: float = Field(1.0, ge=0)  # the Gaussian prior's weight (1: its width is half the bounds' span)
    # a fitted calibration offset / scale is kept only if putting the prior's value back raises the training RMSE
    # by more than this fraction (it acts through gravity and contacts alone: restore_unobserved_calibration)
    calibration_min_gain: float = Field(0.02, ge=0)
    # refuse a recording too short to identify anything
    min_frames: Annotated[int, Field(ge=1)] = 150
    min_motion_deg: float = Field(3.0, ge=0)  # every joint must sweep this much in some training episode

class TwinConfig(Section):
    """Stage `usd_twin`: one OpenUSD stage (robot, colliders, splat, cameras, physics scene) and the physics checks
    that gate it (Newton settle test, open-loop replay of recorded actions)."""

    # physics scene and materials
    physics_dt_s: Positive = 1 / 480  # 16 physics steps per frame of a 30 fps recording
    gravity_m_s2: Positive = 9.81
    support_friction: Positive = 0.8  # static and dynamic friction of the support and fixed objects
    object_friction: Positive = 1.5  # of the task objects (rigid bodies)
    restitution: float = Field(0.0, ge=0, le=1)
    # MuJoCo contact model of the colliders (Newton reads mjc:*): elliptic friction cones, and contacts stiffer
    # than MuJoCo's 0.02 s default — reconstructed hulls touch at fewer points than a box, and sank 1.9 mm with it
    friction_cone: Literal["elliptic", "pyramidal"] = "elliptic"
    impratio: Positive = 10.0
    contact_time_constant_s: Positive = 0.01
    # contacts are detected this far apart (newton:contactGap); Newton's 0.1 m default made MuJoCo track ~80 far-apart
    # pairs and step 50x slower
    contact_gap_m: Positive = 0.005
    # parts of models/mesh/scene.json that become rigid bodies; the other parts are static colliders (the bin is
    # fixed to the table in this workcell). A real capture names its parts object_<k>: list those here.
    dynamic_objects: tuple[str, ...] = ("cube",)
    # splat: Gaussians within this margin of a rigid object's box move with it; those this close to the robot at
    # capture time are set aside (invisible prim: the robot has its own meshes and moves)
    object_splat_margin_m: float = Field(0.004, ge=0)
    robot_splat_clearance_m: float = Field(0.012, ge=0)
    # settle test (blocking): objects at rest on the table, no deep contact, the robot holds its home pose
    settle_seconds: Positive = 2.0
    max_penetration_mm: Positive = 2.0
    max_settle_drift_mm: Positive = 5.0
    max_rest_speed_m_s: Positive = 0.01
    max_home_error_deg: Positive = 2.0
    # renders of the twin's splat through its capture cameras vs the capture photos
    render_views: Annotated[int, Field(ge=1)] = 8
    # open-loop replay of recorded actions: the sim<->real dynamics gap
    replay_episodes: Annotated[int, Field(ge=0)] = 8  # demo episodes replayed (0: all)
    # a real SO-101 recording (LeRobot v3.0 folder, relative to the project root) replayed as well; '' = none
    real_recording: str = "../shared/data/so101-real-pickplace"
    max_replay_rmse_deg: Positive = 5.0  # above: a warning on the asset (the gap is reported, not gated)
    # the servos: the prior, and their identification from the demos (and, as its own profile, the real recording)
    servo_prior: ServoPriorConfig = ServoPriorConfig()
    identify: IdentifyConfig = IdentifyConfig()
