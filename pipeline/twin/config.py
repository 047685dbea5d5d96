"""The `twin` section of params.yaml: the OpenUSD twin and how it is validated."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.common.sections import Section, Positive

class TwinConfig(Section):
    """Stage `usd_twin`: one OpenUSD stage (robot, colliders, splat, cameras, physics scene) and the physics checks
    that gate it (Newton settle test, open-loop replay of recorded actions)."""

    # physics scene and materials
    physics_dt_s: Positive = 1 / 480  # the workcell's 30 fps x 16 substeps
    gravity_m_s2: Positive = 9.81
    support_friction: Positive = 0.8  # static and dynamic friction of the support and fixed objects
    object_friction: Positive = 1.5  # of the task objects (rigid bodies)
    restitution: float = Field(0.0, ge=0, le=1)
    # MuJoCo contact model of the colliders (Newton reads mjc:*): the workcell's elliptic cones, and contacts stiffer
    # than MuJoCo's 0.02 s default — reconstructed hulls touch at fewer points than a box, and sank 1.9 mm with it
    friction_cone: Literal["elliptic", "pyramidal"] = "elliptic"
    impratio: Positive = 10.0
    contact_time_constant_s: Positive = 0.01
    # contacts are detected this far apart (newton:contactGap); Newton's 0.1 m default made MuJoCo track ~80 far-apart
    # pairs and step 50x slower than the workcell
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
