"""The recipe: `params.yaml` validated into typed, frozen models.

`params.yaml` is the only place hyper-parameters live. Dagster assets and DVC stages both read it through
`load_recipe`; an unknown or mistyped key is an error that names the key (and the closest valid one).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]
Joint6 = tuple[float, float, float, float, float, float]
Positive = Annotated[float, Field(gt=0)]
PolicyOption = str | int | float | bool | None | list[int | float] | dict[str, str]  # a lerobot config value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def md5(self, exclude: set[str] | None = None) -> str:
        """md5 of the canonical JSON of this section (without the `exclude` fields)."""
        payload = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.md5(payload.encode()).hexdigest()


class Range(_Section):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class ProjectConfig(_Section):
    """Where DVC pushes artifacts (a relative path resolves against the project root: outside the work tree)."""

    dvc_remote: str = Field("../twinloop-dvc-store", description="path or URL of the default DVC remote; '' = none")


class TableConfig(_Section):
    size_xy: Vec2 = (0.6, 0.8)
    center_xy: Vec2 = (0.2, 0.0)
    thickness: Positive = 0.02
    friction: Positive = 0.8


class CubeConfig(_Section):
    size: Annotated[float, Field(ge=0.02, le=0.03)] = 0.025  # the task asks for a 2-3 cm cube
    mass: Positive = 0.015
    friction: Positive = 1.5
    torsional_friction: float = Field(0.02, ge=0)
    spawn_x: Range = Range(low=0.16, high=0.24)
    spawn_y: Range = Range(low=-0.08, high=0.08)
    spawn_yaw_deg: Range = Range(low=-45.0, high=45.0)


class BinConfig(_Section):
    center_xy: Vec2 = (0.12, 0.17)
    inner_size_xy: Vec2 = (0.09, 0.09)
    wall_height: Positive = 0.03
    wall_thickness: Positive = 0.004


class ServoConfig(_Section):
    """Position servos on the six joints (order: shoulder_pan … gripper). STS3215 stall torque is ~2.9 N·m."""

    kp: Joint6 = (60.0, 60.0, 60.0, 30.0, 15.0, 10.0)
    kv: Joint6 = (1.5, 1.5, 1.5, 0.8, 0.4, 0.3)
    torque_limit_nm: Joint6 = (2.9, 2.9, 2.9, 2.9, 2.9, 1.5)
    armature: float = Field(0.005, ge=0)
    frictionloss: float = Field(0.01, ge=0)


class FrontCameraConfig(_Section):
    position: Vec3 = (0.62, 0.0, 0.45)
    look_at: Vec3 = (0.12, 0.04, 0.06)
    fovy_deg: Positive = 55.0


class WristCameraConfig(_Section):
    # isaaclab_so101's SO101_WRIST_CAMERA_CFG: offset in the gripper link, rolled -45° about its x axis.
    offset_pos: Vec3 = (-0.005, 0.06, -0.062)
    offset_roll_deg: float = -45.0
    fovy_deg: Positive = 60.0


class CamerasConfig(_Section):
    width: Annotated[int, Field(ge=32, le=1920)] = 640
    height: Annotated[int, Field(ge=32, le=1080)] = 480
    front: FrontCameraConfig = FrontCameraConfig()
    wrist: WristCameraConfig = WristCameraConfig()


class WorkcellConfig(_Section):
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


class ExpertConfig(_Section):
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


class DemoChecksConfig(_Section):
    """Thresholds of the `demos` quality checks (units: so101_follower joint units, frames)."""

    min_episodes: Annotated[int, Field(ge=1)] = 5
    timestamp_tolerance_s: Positive = 1e-3
    idle_range_units: float = Field(3.0, ge=0)  # an episode whose arm actions never span more than this is idle
    max_lag_frames: Annotated[int, Field(ge=0)] = 6  # state trailing the action by more frames than this: warn
    duplicate_distance_units: float = Field(0.5, ge=0)  # mean |Δaction| between two episodes below this: warn


class DemosConfig(_Section):
    """Where the demonstrations come from and what they must satisfy."""

    source: Literal["sim", "local", "hub"] = "sim"
    local_path: str = ""  # source: local — a LeRobot v3.0 dataset folder
    repo_id: str = ""  # source: hub — a Hugging Face dataset repo id (needs network)
    state_only: bool = False  # accept a dataset without camera videos, keeping state/action only
    episodes: Annotated[int, Field(ge=1)] = 80  # source: sim — successful episodes to record
    seed: int = 0
    task: str = "Pick the red cube and place it in the blue bin"
    checks: DemoChecksConfig = DemoChecksConfig()


class BcConfig(_Section):
    """Behaviour cloning with lerobot's trainer (`lerobot-train` arguments are built from these; see pipeline.bc.stage)."""

    policy: Literal["act", "diffusion", "smolvla"] = "act"
    pretrained_path: str = ""  # fine-tune a local lerobot checkpoint (smolvla needs its weights here: no Hub access)
    # What the policy sees. The default is the sim baseline: joints + the cube pose the simulator knows; add
    # observation.images.front / .wrist to learn from pixels (real recordings have no environment_state).
    observations: tuple[str, ...] = ("observation.state", "observation.environment_state")
    # Per policy type, lerobot policy-config fields passed as --policy.<key>=<value> (lerobot validates them); only
    # the entry of `policy` is used. ACT is sized to train on 2 CPU cores in minutes: no VAE (scripted demos are
    # unimodal; the VAE encoder triples the step cost), a 2-layer encoder, 20-step chunks blended by temporal
    # ensembling (a new chunk every step, as the ACT paper runs it: measured 97 % vs 73 % closed-loop success for
    # the same weights executed 10 steps per chunk). lerobot's presets leave ENV features unnormalized: the cube's
    # ±8 cm would vanish next to standardized joints, so ENV is normalized like STATE. No ImageNet download: a
    # vision backbone starts from scratch unless `pretrained_path` names a local checkpoint.
    policy_options: dict[str, dict[str, PolicyOption]] = {
        "act": {"chunk_size": 20, "n_action_steps": 1, "temporal_ensemble_coeff": 0.01, "use_vae": False,
                "dim_model": 128, "dim_feedforward": 512, "n_encoder_layers": 2, "pretrained_backbone_weights": None,
                "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ENV": "MEAN_STD",
                                          "ACTION": "MEAN_STD"}},
        "diffusion": {"horizon": 16, "n_action_steps": 8, "drop_n_last_frames": 7, "down_dims": [128, 256],
                      "pretrained_backbone_weights": None, "use_group_norm": True,
                      "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ENV": "MIN_MAX",
                                                "ACTION": "MIN_MAX"}},
        "smolvla": {},
    }
    # AdamW with a cosine decay from `lr` to `lr_final` over `steps` (after `warmup_steps`): the last checkpoint is
    # the settled one (a constant rate left checkpoints 1000 steps apart between 20 % and 73 % success).
    lr: Positive = 3e-4
    lr_final: Positive = 1e-5
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip_norm: Positive = 10.0
    steps: Annotated[int, Field(ge=1)] = 6000
    batch_size: Annotated[int, Field(ge=1)] = 32  # per GPU: with `gpus` > 1 the effective batch is batch_size x gpus
    # GPUs for training: > 1 runs lerobot's multi-GPU path (`accelerate launch --multi_gpu`, data parallel, one
    # process per GPU) and needs that many CUDA devices; a cluster profile requests them for the step's pod.
    gpus: Annotated[int, Field(ge=1)] = 1
    num_workers: Annotated[int, Field(ge=0)] = 0  # data-loader processes; 0 suits tabular features on few cores
    seed: int = 0
    log_freq: Annotated[int, Field(ge=1)] = 100
    save_freq: Annotated[int, Field(ge=1)] = 1000  # checkpoint period: the most steps an interruption can lose
    held_out_episodes: Annotated[int, Field(ge=1)] = 2  # the last N demo episodes: never trained on, scored offline
    eval_episodes: Annotated[int, Field(ge=1)] = 50  # closed-loop sim episodes (K) behind the success rate
    eval_seed: int = 1_000_000  # first cube-pose seed of the closed-loop episodes (demos use 0..)
    min_action_magnitude_ratio: Annotated[float, Field(ge=0)] = 0.3  # below: the "twitching" warning

    @model_validator(mode="after")
    def _runnable_here(self):
        if self.policy == "smolvla" and not self.pretrained_path:
            raise ValueError("smolvla fine-tunes pretrained weights, which cannot be downloaded here: set "
                             "pretrained_path to a local smolvla checkpoint folder")
        return self

    def training_fingerprint(self) -> str:
        """md5 of what shapes the checkpoint. `steps` and the evaluation fields are left out: raising `steps`
        resumes the last checkpoint (long training continues), re-evaluating never retrains."""
        skip = {"steps", "eval_episodes", "eval_seed", "min_action_magnitude_ratio", "log_freq"}
        return self.md5(exclude=skip)


class BoardConfig(_Section):
    """The ChArUco board (OpenCV's `cv2.aruco.CharucoBoard`) that gives an image/video capture its metric scale and
    places it in the robot base frame. Print it, measure a square, lay it flat on the table, face up."""

    squares_x: Annotated[int, Field(ge=3)] = 7
    squares_y: Annotated[int, Field(ge=3)] = 5
    square_size_m: Positive = 0.03
    marker_size_m: Positive = 0.022
    dictionary: str = "DICT_5X5_100"  # a cv2.aruco predefined dictionary name
    # Where the board's origin (OpenCV's board corner (0, 0, 0)) lies in the robot base frame, and the angle of the
    # board's x axis (along `squares_x`) from the base x axis, counter-clockwise seen from above.
    origin_in_base: Vec3 = (0.1, -0.1, 0.0)
    yaw_deg: float = 0.0
    min_views: Annotated[int, Field(ge=2)] = 3  # registered images that must see the board


class CaptureConfig(_Section):
    """Stage `scene_capture`: posed images of the workcell in nerfstudio's transforms.json convention (robot base
    frame, metres). Sources: `sim` renders the sim workcell from known viewpoints (the default recipe); `posed` reads
    a folder that already holds transforms.json + images; `images` (a folder) and `video` (a file) are posed with
    COLMAP (pycolmap) and scaled/aligned with the ChArUco `board`."""

    source: Literal["sim", "posed", "images", "video"] = "sim"
    path: str = ""  # posed/images: a folder; video: a video file (relative paths resolve against the project root)
    min_images: Annotated[int, Field(ge=3)] = 20
    # source: sim — viewpoints on an orbit around `look_at`, as a person walking round the cell with a phone would
    views: Annotated[int, Field(ge=3, le=1000)] = 64
    # 160x120 keeps CPU splat training within minutes (its cost grows with pixels x Gaussians per pixel)
    width: Annotated[int, Field(ge=32, le=4096)] = 160
    height: Annotated[int, Field(ge=32, le=4096)] = 120
    fovy_deg: Annotated[float, Field(gt=5, lt=170)] = 55.0
    look_at: Vec3 = (0.15, 0.0, 0.08)
    distance_m: Range = Range(low=0.55, high=0.85)
    elevation_deg: Range = Range(low=20.0, high=65.0)
    seed: int = 0
    # source: video — keep every n-th frame, at most `max_images`
    video_every_nth_frame: Annotated[int, Field(ge=1)] = 10
    max_images: Annotated[int, Field(ge=3)] = 200
    board: BoardConfig = BoardConfig()


class DensifyConfig(_Section):
    """gsplat's DefaultStrategy (the 3DGS paper's adaptive density control), on both renderers."""

    refine_start_iter: Annotated[int, Field(ge=0)] = 300
    refine_stop_iter: Annotated[int, Field(ge=0)] = 500  # gsplat: 15k of 30k steps; scaled to the CPU run
    refine_every: Annotated[int, Field(ge=1)] = 100
    reset_every: Annotated[int, Field(ge=1)] = 3000  # opacity reset period (longer than a CPU run: none happens)
    grow_grad2d: Positive = 0.0002
    prune_opa: Positive = 0.005


class SplatConfig(_Section):
    """Stage `gaussian_splat`: 3D Gaussian splatting of the capture (gsplat on CUDA, the same math in PyTorch on
    CPU), or an externally trained INRIA-format PLY (e.g. `ns-export gaussian-splat`) scored on the same views."""

    source: Literal["train", "ply"] = "train"
    ply_path: str = ""  # source: ply — a 3DGS PLY in the capture's frame
    backend: Literal["auto", "gsplat", "torch"] = "auto"  # auto: gsplat when CUDA is present, else the CPU renderer
    iterations: Annotated[int, Field(ge=1)] = 600  # ~3 min on 2 CPU cores at 160x120; a GPU affords 7k-30k
    holdout_every: Annotated[int, Field(ge=2)] = 8  # every k-th capture image is held out: never trained on
    seed: int = 0
    init_points: Annotated[int, Field(ge=100)] = 10_000  # points drawn from the capture's point cloud
    init_opacity: Annotated[float, Field(gt=0, lt=1)] = 0.1
    init_scale: Positive = 1.0  # times the mean distance to the 3 nearest points
    sh_degree: Annotated[int, Field(ge=0, le=3)] = 3
    sh_degree_interval: Annotated[int, Field(ge=1)] = 200  # raise the SH degree in use every N steps
    ssim_lambda: Annotated[float, Field(ge=0, le=1)] = 0.2
    # Adam learning rates of gsplat's simple_trainer (means scaled by the scene size, decayed 100x over the run)
    lr_means: Positive = 1.6e-4
    lr_scales: Positive = 5e-3
    lr_quats: Positive = 1e-3
    lr_opacities: Positive = 5e-2
    lr_sh0: Positive = 2.5e-3
    lr_shN: Positive = 2.5e-3 / 20
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    background: Vec3 = (0.0, 0.0, 0.0)  # what shows where no Gaussian covers a pixel (the sim renders black there)
    densify: DensifyConfig = DensifyConfig()
    # Checkpoint period in seconds of training (a GPU step takes milliseconds, a CPU one a third of a second): the
    # most work an interruption can lose. The last step is always saved.
    checkpoint_every_s: Annotated[float, Field(ge=0)] = 30.0
    log_every: Annotated[int, Field(ge=1)] = 50
    min_holdout_psnr_db: float = 25.0  # the blocking asset check

    def training_fingerprint(self) -> str:
        """md5 of what shapes the trained Gaussians; `iterations` is left out so raising it resumes the run."""
        skip = {"iterations", "min_holdout_psnr_db", "log_every", "checkpoint_every_s", "backend"}
        return self.md5(exclude=skip)


class MeshConfig(_Section):
    """Stage `collision_mesh`: depth rendered from the splat at the capture views, fused into a TSDF (Open3D), cleaned,
    split into the support surface and the objects on it, and decomposed into convex hulls (CoACD)."""

    # rendering and fusion
    min_pixel_opacity: Annotated[float, Field(gt=0, lt=1)] = 0.5  # fainter splat pixels carry no depth
    # Gaussians this far in front of / behind the first surface along a ray count towards its depth (see
    # `render_surface_depth`): wide enough for a splat surface's thickness, thinner than the objects
    surface_band_front_m: Positive = 0.005
    surface_band_back_m: Positive = 0.015
    max_depth_m: Positive = 1.5
    depth_edge_m: Positive = 0.01  # pixels beside a larger depth jump are silhouettes: not fused
    voxel_m: Positive = 0.003  # TSDF voxel; the truncation is `trunc_voxels` voxels
    trunc_voxels: Annotated[float, Field(ge=1)] = 3.0  # wider truncation widens objects' edges
    # the region to reconstruct, robot base frame (the default: the table top and what stands on it, not the floor)
    workspace_min: Vec3 = (-0.15, -0.45, -0.05)
    workspace_max: Vec3 = (0.6, 0.45, 0.4)
    # the robot is modelled by its own USD: its surfaces (posed at the capture's joint state) are cut out
    remove_robot: bool = True
    robot_clearance_m: Positive = 0.015
    robot_joint_positions_rad: Joint6 | None = None  # for captures without a scene_state.json (SO-101 joint order)
    # cleaning
    min_component_triangles: Annotated[int, Field(ge=0)] = 200
    target_triangles: Annotated[int, Field(ge=100)] = 60_000
    # support plane (RANSAC) and objects
    plane_distance_m: Positive = 0.004
    plane_ransac_iterations: Annotated[int, Field(ge=10)] = 2000
    plane_min_inlier_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2
    plane_max_tilt_deg: Annotated[float, Field(gt=0, le=90)] = 15.0  # a support must be roughly horizontal
    # points higher above the plane outline objects; lower bumps are noise (near the edges of the table the default
    # capture reconstructs ridges up to ~1 cm high)
    object_min_height_m: Positive = 0.012
    # footprints closer than this are one object: a thin bin wall reconstructs in pieces
    cluster_eps_m: Positive = 0.03
    min_object_area_m2: Positive = 1e-4  # smaller footprints (under 1 cm square) are noise
    # objects become height-field solids on cells of this size: about what one capture pixel covers at 0.7 m
    solid_cell_m: Positive = 0.006
    support_thickness_m: Positive = 0.02  # the support becomes a box this thick under the plane
    # convex decomposition (CoACD) and physics
    convex_fill: Annotated[float, Field(gt=0, le=1)] = 0.8  # a solid filling this much of its hull is one hull
    coacd_threshold: Annotated[float, Field(gt=0, le=1)] = 0.15  # concavity; lower = more, tighter hulls
    seed: int = 0  # RANSAC and CoACD
    coacd_mcts_iterations: Annotated[int, Field(ge=1)] = 60  # CoACD's default 150; fewer is faster
    max_hulls_per_object: Annotated[int, Field(ge=1)] = 16
    max_hulls: Annotated[int, Field(ge=1)] = 64
    object_density_kg_m3: Positive = 960.0  # the sim cube: 15 g in a 2.5 cm cube
    # gates (blocking asset checks)
    expected_objects: Annotated[int, Field(ge=0)] | None = 2  # the cube and the bin; null: not checked
    max_chamfer_mm: Positive = 5.0  # to the capture's ground-truth depth, when it has one (sim)


class TwinConfig(_Section):
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


class RlRewardConfig(_Section):
    """Pick-and-place reward terms (weights per control step)."""

    reach: float = 1.0  # 1 - tanh(|tcp - cube| / 5 cm)
    lift: float = 2.0  # cube 2 cm above where it rests
    place: float = 2.0  # lifted, 1 - tanh(|cube - bin| (xy) / 5 cm)
    success: float = 10.0  # the cube at rest in the bin
    action_rate: float = -0.01  # |residual_t - residual_t-1|^2
    residual: float = -0.001  # |residual|^2: stay close to BC unless it pays


class RlRandomizationConfig(_Section):
    """Domain randomization per episode (the cube's pose comes from workcell.cube's spawn ranges)."""

    cube_mass_scale: Range = Range(low=0.8, high=1.25)
    joint_gain_scale: Range = Range(low=0.85, high=1.15)  # servo stiffness and damping
    max_action_latency_steps: Annotated[int, Field(ge=0)] = 1  # each episode delays commands by 0..N control steps
    joint_noise_units: float = Field(0.5, ge=0)  # Gaussian noise on the actor's joint reading (so101 units)


class RlConfig(_Section):
    """Stage `rl_policy`: a residual on the frozen BC policy, PPO (rsl_rl) in Isaac Lab on the USD twin."""

    physics: Literal["newton", "physx"] = "newton"  # physx needs Isaac Sim (not installable from PyPI)
    num_envs: Annotated[int, Field(ge=1)] = 64  # per GPU (with `gpus` > 1, gpus x num_envs envs in all)
    # GPUs for PPO: > 1 runs Isaac Lab's distributed mode (torchrun, one env + rsl_rl learner per GPU, gradients
    # all-reduced over NCCL, seed + rank per process); needs that many CUDA devices.
    gpus: Annotated[int, Field(ge=1)] = 1
    physics_dt_s: Positive = 1 / 240  # control runs at the recording's fps: decimation = 1 / (fps x dt)
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


class EvalRealConfig(_Section):
    """A real SO-101 follower (lerobot `so101_follower`; needs `lerobot[feetech]`, installed with Twinloop)."""

    port: str = ""  # e.g. /dev/ttyACM0 (`lerobot-find-port`)
    robot_id: str = "twinloop_follower"  # lerobot calibration id
    calibration_dir: str = ""  # '' = lerobot's default calibration folder
    max_relative_target: Positive = 10.0  # lerobot's per-step clamp (so101 units): always on
    cameras: dict[str, dict[str, str | int | float]] = {}  # name -> OpenCVCameraConfig fields (recorded, not read)
    cube_z_m: Positive = 0.0125  # centre height of the placed cube (the BC policy reads the placed pose)


class EvalConfig(_Section):
    """Stage `eval_report`: BC alone vs BC + residual, paired on the same initial conditions, on one robot."""

    robot: Literal["twin", "so101_follower"] = "twin"
    pairs: Annotated[int, Field(ge=1)] = 30  # initial conditions; each runs both policies, in alternating order
    seed: int = 3_000_000  # condition k draws from seed + k (held out from rl.seed and rl.eval_seed)
    episode_seconds: Positive = 8.0
    randomize: bool = True  # twin: held-out draws of rl.randomization's ranges (mass, gains, latency, noise)
    extra_policies: list[str] = []  # more rl_policy folders (other rl.seed): success variance across policy seeds
    failure_examples: Annotated[int, Field(ge=0)] = 4  # failed rollouts shown with frames
    real: EvalRealConfig = EvalRealConfig()


class Recipe(_Section):
    """The whole of params.yaml."""

    project: ProjectConfig = ProjectConfig()
    workcell: WorkcellConfig = WorkcellConfig()
    expert: ExpertConfig = ExpertConfig()
    demos: DemosConfig = DemosConfig()
    bc: BcConfig = BcConfig()
    capture: CaptureConfig = CaptureConfig()
    splat: SplatConfig = SplatConfig()
    mesh: MeshConfig = MeshConfig()
    twin: TwinConfig = TwinConfig()
    rl: RlConfig = RlConfig()
    eval: EvalConfig = EvalConfig()

    def section_hash(self, section: str) -> str:
        """md5 of one section's canonical JSON: changes exactly when that stage's recipe changes."""
        return getattr(self, section).md5()


class RecipeError(ValueError):
    """params.yaml is missing, unreadable, or holds an unknown / invalid key."""


def load_recipe(path: str | Path = "params.yaml") -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: the top level must be a mapping of stage sections")
    return parse_recipe(raw, source=str(path))


def parse_recipe(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(f"{source}: " + "; ".join(_explain(err) for err in exc.errors())) from None


def _explain(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        model = Recipe
        for part in loc[:-1]:
            field = model.model_fields.get(part)
            model = field.annotation if field is not None else None
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                model = None
                break
        valid = sorted(model.model_fields) if model is not None else []
        near = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else (f" (valid keys: {', '.join(valid)})" if valid else "")
        return f"unknown key '{key}'{hint}"
    return f"'{key}': {err['msg']}"
