"""Compile the SO-101 workcell into a self-contained MuJoCo model, from the official SO-101 USD.

The robot is never hand-written: Newton parses the official USD shipped in `isaaclab-so101` (the same parser Isaac
Lab uses kit-less), the table, cube and bin are added to the same Newton `ModelBuilder`, and Newton's MuJoCo solver
converts the whole scene to MJCF. We then add what a MuJoCo user needs to record demos — short names, force-limited
servos, lerobot-named cameras, a TCP site, colours, lights — decimate the visual meshes so the scene renders fast on
a CPU, and write `workcell.xml` + `meshes/` + `workcell.json` (the recipe and the USD's md5).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
from isaaclab_so101.constants import TCP_OFFSET

from pipeline.common.artifacts import file_md5
from pipeline.workcell.config import WorkcellConfig
from pipeline.workcell.joints import LEROBOT_JOINT_NAMES, LIMITS_HI_RAD, LIMITS_LO_RAD, SIM_JOINTS

ROBOT_PREFIX = "_so101_new_calib_"  # Newton mangles USD prim paths into MJCF names
ROBOT_BODIES = ("base", "shoulder", "upper_arm", "lower_arm", "wrist", "gripper", "jaw")
# Colours by part family, so the cameras see a robot that looks like the printed arm.
_PART_RGBA = {
    "sts3215": (0.12, 0.12, 0.13, 1.0),  # Feetech servos
    "camera_mount": (0.15, 0.15, 0.15, 1.0),
    "waveshare": (0.1, 0.3, 0.15, 1.0),
}
_PRINTED_RGBA = (0.95, 0.85, 0.25, 1.0)  # 3D-printed parts
WORKCELL_XML = "workcell.xml"
WORKCELL_JSON = "workcell.json"


def package_relative(path: Path) -> str:
    """`isaaclab_so101/...`: where an installed file sits inside its package, the same on every machine."""
    import isaaclab_so101

    package = Path(isaaclab_so101.__file__).resolve().parent
    try:
        return f"isaaclab_so101/{Path(path).resolve().relative_to(package).as_posix()}"
    except ValueError:
        return str(path)


def official_robot_usd() -> Path:
    """The official SO-101 USD (UsdPhysics joints + drives) shipped by the `isaaclab-so101` package."""
    from isaaclab_so101.constants import USD_PATH

    if not Path(USD_PATH).is_file():
        raise FileNotFoundError(f"the SO-101 USD is missing from isaaclab-so101: {USD_PATH}")
    return Path(USD_PATH)


def _quat_z(yaw: float) -> tuple[float, float, float, float]:
    """(x, y, z, w) quaternion of a rotation by `yaw` radians about +Z (Newton/Warp order)."""
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def prepare_robot_stage(cfg: WorkcellConfig, progress=None):
    """The official SO-101 USD, made loadable as rigid-body colliders by Newton/MuJoCo, in a session layer (the file
    on disk is untouched); see `add_robot_colliders`."""
    from pxr import Usd

    stage = Usd.Stage.Open(str(official_robot_usd()))
    stage.SetEditTarget(stage.GetSessionLayer())
    add_robot_colliders(stage, stage.GetDefaultPrim().GetPath(), cfg, progress)
    for scope in ("/visuals", "/colliders", "/meshes"):  # prototypes of the instances: not scene content
        if stage.GetPrimAtPath(scope).IsValid():
            stage.GetPrimAtPath(scope).SetActive(False)
    return stage


def add_robot_colliders(stage, robot_root, cfg: WorkcellConfig, progress=None) -> None:
    """Author explicit convex colliders on the SO-101 under `robot_root`, in the stage's current edit target.

    The USD is authored for PhysX: each link's `collisions` prim is an instanceable reference with an SDF mesh
    approximation, which Newton does not load as colliders (it loads the instance prototypes as loose world shapes
    instead). Here the instances are expanded, each collider mesh gets an explicit convex-hull approximation, and the
    jaw parts — non-convex, where the grasp happens — are split into convex pieces with CoACD.
    """
    import coacd
    from pxr import Gf, Usd, UsdGeom, UsdPhysics, Vt

    say = progress or (lambda msg: None)
    coacd.set_log_level("error")
    for link in ROBOT_BODIES:
        collisions = stage.GetPrimAtPath(robot_root.AppendPath(f"{link}/collisions"))
        if not collisions.IsValid():
            raise RuntimeError(f"the SO-101 USD has no colliders for link {link!r}")
        collisions.SetInstanceable(False)
        for prim in [p for p in Usd.PrimRange(collisions) if p.IsA(UsdGeom.Mesh)]:
            part = prim.GetParent().GetName()
            if not any(key in part for key in cfg.decompose_parts):
                UsdPhysics.CollisionAPI.Apply(prim)
                UsdPhysics.MeshCollisionAPI.Apply(prim).CreateApproximationAttr("convexHull")
                continue
            say(f"convex decomposition of {part} (CoACD)")
            mesh = UsdGeom.Mesh(prim)
            points = np.asarray(mesh.GetPointsAttr().Get(), dtype=np.float64)
            faces = np.asarray(mesh.GetFaceVertexIndicesAttr().Get(), dtype=np.int64).reshape(-1, 3)
            verts, faces = _simplify(points, faces, cfg.decompose_max_faces)
            hulls = coacd.run_coacd(coacd.Mesh(verts, faces), threshold=cfg.coacd_threshold, max_convex_hull=16,
                                    preprocess_resolution=40, resolution=1000, mcts_iterations=60, mcts_max_depth=2,
                                    seed=cfg.seed)
            local = UsdGeom.Xformable(prim).GetLocalTransformation()
            for k, (hv, hf) in enumerate(hulls):
                hull = UsdGeom.Mesh.Define(stage, prim.GetParent().GetPath().AppendChild(f"coacd_{k:02d}"))
                hull.CreatePointsAttr(Vt.Vec3fArray([Gf.Vec3f(*map(float, v)) for v in hv]))
                hull.CreateFaceVertexIndicesAttr(Vt.IntArray([int(i) for i in np.asarray(hf).reshape(-1)]))
                hull.CreateFaceVertexCountsAttr(Vt.IntArray([3] * len(hf)))
                hull.CreateExtentAttr(UsdGeom.Mesh.ComputeExtent(hull.GetPointsAttr().Get()))
                hull.CreatePurposeAttr(UsdGeom.Tokens.guide)  # collision geometry: not drawn by default
                hull.AddTransformOp().Set(local)
                UsdPhysics.CollisionAPI.Apply(hull.GetPrim())
                UsdPhysics.MeshCollisionAPI.Apply(hull.GetPrim()).CreateApproximationAttr("convexHull")
            prim.SetActive(False)


def _simplify(points: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    import fast_simplification
    import trimesh

    tm = trimesh.Trimesh(points, faces, process=True)  # merge the duplicated vertices of the USD export
    if len(tm.faces) > max_faces:
        v, f = fast_simplification.simplify(tm.vertices, tm.faces, target_reduction=1 - max_faces / len(tm.faces))
        return np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64)
    return np.asarray(tm.vertices), np.asarray(tm.faces)


def build_newton_model(cfg: WorkcellConfig, device: str = "cpu", worlds: int = 1, progress=None):
    """The workcell as a Newton model, `worlds` independent copies of it. Used for the MJCF export here and, on CUDA,
    for batched MJWarp stepping of the same scene (see bench/newton_workcell.py)."""
    single = build_newton_builder(cfg, progress)
    if worlds == 1:
        return single.finalize(device=device)
    return replicate_workcell(single, worlds, device)


def replicate_workcell(single, worlds: int, device: str = "cpu"):
    """`worlds` independent copies of a one-workcell `ModelBuilder`, finalized on `device`."""
    import newton

    batched = newton.ModelBuilder()
    newton.solvers.SolverMuJoCo.register_custom_attributes(batched)
    batched.replicate(single, worlds)
    return batched.finalize(device=device)


def build_newton_builder(cfg: WorkcellConfig, progress=None):
    """One workcell in a Newton `ModelBuilder`: official SO-101 USD + table + bin + free cube."""
    import newton
    import warp as wp

    wp.config.quiet = True
    builder = newton.ModelBuilder()
    newton.solvers.SolverMuJoCo.register_custom_attributes(builder)
    builder.add_usd(
        prepare_robot_stage(cfg, progress),
        xform=wp.transform((0.0, 0.0, 0.0), _quat_z(math.radians(cfg.robot_base_yaw_deg))),
        enable_self_collisions=False,
    )
    table = cfg.table
    surface = newton.ModelBuilder.ShapeConfig(mu=table.friction)
    builder.add_shape_box(
        body=-1,
        xform=wp.transform((table.center_xy[0], table.center_xy[1], -table.thickness / 2), wp.quat_identity()),
        hx=table.size_xy[0] / 2, hy=table.size_xy[1] / 2, hz=table.thickness / 2,
        cfg=surface, label="table",
    )
    # The bin: a floor and four walls, open on top, fixed to the table.
    b = cfg.bin
    bx, by = b.center_xy
    ix, iy = b.inner_size_xy[0] / 2, b.inner_size_xy[1] / 2
    t, h = b.wall_thickness, b.wall_height
    parts = {
        "bin_floor": ((bx, by, t / 2), (ix + t, iy + t, t / 2)),
        "bin_wall_px": ((bx + ix + t / 2, by, h / 2), (t / 2, iy + t, h / 2)),
        "bin_wall_nx": ((bx - ix - t / 2, by, h / 2), (t / 2, iy + t, h / 2)),
        "bin_wall_py": ((bx, by + iy + t / 2, h / 2), (ix, t / 2, h / 2)),
        "bin_wall_ny": ((bx, by - iy - t / 2, h / 2), (ix, t / 2, h / 2)),
    }
    for name, (pos, half) in parts.items():
        builder.add_shape_box(body=-1, xform=wp.transform(pos, wp.quat_identity()),
                              hx=half[0], hy=half[1], hz=half[2], cfg=surface, label=name)
    c = cfg.cube
    half = c.size / 2
    cube = builder.add_body(xform=wp.transform((0.2, 0.0, half), wp.quat_identity()), label="cube")
    density = c.mass / c.size**3
    builder.add_shape_box(body=cube, hx=half, hy=half, hz=half,
                          cfg=newton.ModelBuilder.ShapeConfig(mu=c.friction, density=density), label="cube_geom")
    return builder


def compile_workcell(cfg: WorkcellConfig, out_dir: Path, *, progress=None) -> Path:
    """Write `workcell.xml` (+ meshes, + workcell.json) into `out_dir`; returns the XML path."""
    import mujoco
    import newton

    say = progress or (lambda msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say("parsing the official SO-101 USD with Newton")
    model = build_newton_model(cfg, progress=say)
    with tempfile.TemporaryDirectory() as tmp:
        raw_xml = Path(tmp) / "newton_export.xml"
        say("converting the Newton scene to MuJoCo")
        newton.solvers.SolverMuJoCo(model, use_mujoco_cpu=True, save_to_mjcf=str(raw_xml),
                                    skip_visual_only_geoms=False)
        spec = mujoco.MjSpec.from_file(str(raw_xml))
    say("decimating visual meshes, adding servos, cameras and lights")
    _finish_spec(spec, cfg, out_dir)
    xml_path = out_dir / WORKCELL_XML
    # to_xml() compiles, so it must find the meshes: give it the absolute folder, then write it relative.
    spec.meshdir = str((out_dir / "meshes").resolve())
    xml_path.write_text(spec.to_xml().replace(f'meshdir="{spec.meshdir}"', 'meshdir="meshes"'))
    mujoco.MjModel.from_xml_path(str(xml_path))  # fail here, not at load time, if anything is inconsistent
    usd = official_robot_usd()
    meta = {
        "robot_usd": package_relative(usd),
        "robot_usd_md5": file_md5(usd),
        "joints_sim": list(SIM_JOINTS),
        "joints_lerobot": list(LEROBOT_JOINT_NAMES),
        "cameras": ["front", "wrist"],
    }
    (out_dir / WORKCELL_JSON).write_text(json.dumps(meta, indent=2))
    return xml_path


def _finish_spec(spec, cfg: WorkcellConfig, out_dir: Path) -> None:
    import mujoco

    spec.modelname = "so101_workcell"
    spec.option.timestep = 1.0 / (cfg.fps * cfg.physics_substeps)
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0  # stiffer friction: cubes don't creep out of the jaws
    spec.option.noslip_iterations = 3
    for body in spec.bodies:
        if body.name.startswith(ROBOT_PREFIX):
            body.name = body.name[len(ROBOT_PREFIX):]
    for pair in list(spec.excludes):  # contact exclusions refer to bodies by name
        pair.bodyname1 = pair.bodyname1.removeprefix(ROBOT_PREFIX)
        pair.bodyname2 = pair.bodyname2.removeprefix(ROBOT_PREFIX)
        # Newton's export filters the robot against every other articulation, the cube included; the gripper
        # must touch the cube, so only the robot's own self-collision filter is kept.
        if "cube" in (pair.bodyname1, pair.bodyname2):
            spec.delete(pair)
    for geom in spec.geoms:
        # Newton's contact `gap` means "detect early"; MuJoCo's means "inactive band": reset to MuJoCo's defaults.
        geom.margin = 0.0
        geom.gap = 0.0
    for joint in spec.joints:
        for sim_name in SIM_JOINTS:
            if joint.name.endswith("_joints_" + sim_name):
                joint.name = sim_name
        if joint.name in SIM_JOINTS:
            joint.armature = cfg.servo.armature
            joint.frictionloss = cfg.servo.frictionloss
    _name_actuators(spec, cfg)
    _style_geoms(spec, cfg, out_dir)
    tcp = spec.body("gripper").add_site()
    tcp.name = "tcp"
    tcp.pos = list(TCP_OFFSET)
    tcp.size = [0.004, 0, 0]
    tcp.rgba = [1, 0, 0, 0.0]
    _add_cameras(spec, cfg)
    _add_lights_and_floor(spec)


def _name_actuators(spec, cfg: WorkcellConfig) -> None:
    """Newton exports one position actuator per USD drive; name them after the lerobot joints and limit their torque
    like the STS3215 servos (the USD drives alone would push with unbounded force)."""
    limits = list(cfg.servo.torque_limit_nm)
    kp = list(cfg.servo.kp)
    kv = list(cfg.servo.kv)
    for act in spec.actuators:
        joint = act.target
        for i, sim_name in enumerate(SIM_JOINTS):
            if joint == sim_name or joint.endswith("_joints_" + sim_name):
                act.target = sim_name
                act.name = LEROBOT_JOINT_NAMES[i]
                act.forcelimited = 1
                act.forcerange = [-limits[i], limits[i]]
                act.gainprm[0] = kp[i]
                act.biasprm[1] = -kp[i]
                act.biasprm[2] = -kv[i]
                act.ctrllimited = 1
                act.ctrlrange = [LIMITS_LO_RAD[i], LIMITS_HI_RAD[i]]
    names = {a.name for a in spec.actuators}
    missing = set(LEROBOT_JOINT_NAMES) - names
    if missing:
        raise RuntimeError(f"the SO-101 USD produced no drive for joints {sorted(missing)}")


def _style_geoms(spec, cfg: WorkcellConfig, out_dir: Path) -> None:
    """Visual meshes: decimated, written as binary STL, coloured. Collision meshes: kept inline (MuJoCo collides with
    their convex hulls), hidden from cameras (group 3)."""
    import mujoco
    import trimesh

    mesh_dir = out_dir / "meshes"
    mesh_dir.mkdir(exist_ok=True)
    for old in mesh_dir.glob("*.stl"):
        old.unlink()
    meshes = {m.name: m for m in spec.meshes}
    renamed: dict[str, str] = {}
    for geom in spec.geoms:
        name = geom.name or ""
        if geom.type != mujoco.mjtGeom.mjGEOM_MESH:
            _style_primitive(geom, name, cfg)
            continue
        mesh = meshes[geom.meshname]
        visual = geom.contype == 0 and geom.conaffinity == 0
        if not visual:
            geom.group = 3
            geom.rgba = [0.5, 0.5, 0.5, 0.0]
            geom.friction = [cfg.gripper_friction, 0.005, 0.0001]
            geom.condim = 4
            continue
        geom.group = 1
        geom.rgba = list(_part_rgba(geom.meshname))  # USD part name, before renaming
        if mesh.name not in renamed:  # several geoms may share one mesh: convert it once
            verts = np.asarray(mesh.uservert, dtype=np.float64).reshape(-1, 3)
            faces = np.asarray(mesh.userface, dtype=np.int64).reshape(-1, 3)
            tm = trimesh.Trimesh(verts, faces, process=True)  # merges duplicated vertices
            target = max(200, int(len(tm.faces) * cfg.visual_mesh_keep_fraction))
            tm = trimesh.Trimesh(*_simplify(tm.vertices, tm.faces, target))
            new_name = f"visual_{len(renamed):03d}"
            tm.export(mesh_dir / f"{new_name}.stl")
            renamed[mesh.name] = new_name
            mesh.file = f"{new_name}.stl"
            mesh.uservert = []
            mesh.userface = []
            mesh.name = new_name
        geom.meshname = renamed[geom.meshname] if geom.meshname in renamed else mesh.name


def _part_rgba(mesh_name: str) -> tuple[float, ...]:
    for key, rgba in _PART_RGBA.items():
        if key in mesh_name:
            return rgba
    return _PRINTED_RGBA


def _style_primitive(geom, name: str, cfg: WorkcellConfig) -> None:
    if name[-1:].isdigit() and "_" in name:  # Newton appends the shape index: table_74 -> table
        name = geom.name = name.rsplit("_", 1)[0]
    if name.startswith("table"):
        geom.rgba = [0.55, 0.42, 0.3, 1.0]
    elif name.startswith("bin"):
        geom.rgba = [0.2, 0.35, 0.75, 1.0]
    elif name.startswith("cube"):
        geom.rgba = [0.9, 0.15, 0.1, 1.0]
        geom.condim = 6  # torsional friction: a cube held near the jaw tips must not spin out
        geom.friction = [cfg.cube.friction, cfg.cube.torsional_friction, 0.0001]


def _add_cameras(spec, cfg: WorkcellConfig) -> None:
    """`front`: fixed, looking at the workspace like a real table camera; `wrist`: on the gripper at the official
    mount offset (isaaclab_so101's SO101_WRIST_CAMERA_CFG, OpenGL convention, which MuJoCo shares)."""
    front = cfg.cameras.front
    eye, target = np.asarray(front.position), np.asarray(front.look_at)
    cam = spec.worldbody.add_camera()
    cam.name = "front"
    cam.pos = eye.tolist()
    cam.quat = _look_at_quat(eye, target).tolist()
    cam.fovy = front.fovy_deg
    w = cfg.cameras.wrist
    wrist = spec.body("gripper").add_camera()
    wrist.name = "wrist"
    wrist.pos = list(w.offset_pos)
    roll = math.radians(w.offset_roll_deg)
    wrist.quat = [math.cos(roll / 2), math.sin(roll / 2), 0.0, 0.0]
    wrist.fovy = w.fovy_deg


def _look_at_quat(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(w, x, y, z) orientation of a camera at `eye` looking at `target`, world +Z up (camera looks along -Z)."""
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    rot = np.stack([right, up, -fwd], axis=1)  # columns: camera x, y, z in world
    quat = np.zeros(4)
    import mujoco

    mujoco.mju_mat2Quat(quat, rot.flatten())
    return quat


def _add_lights_and_floor(spec) -> None:
    import mujoco

    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.4, 0.4, 0.4]
    spec.visual.quality.shadowsize = 2048
    # No multisampling: USB cameras have none, and 4x MSAA doubles the cost of a frame on a CPU renderer.
    spec.visual.quality.offsamples = 0
    for pos, direction in (((0.3, -0.6, 1.2), (-0.2, 0.5, -1.0)), ((0.3, 0.6, 1.2), (-0.2, -0.5, -1.0))):
        light = spec.worldbody.add_light()
        light.pos = list(pos)
        light.dir = list(direction)
        light.diffuse = [0.45, 0.45, 0.45]
        light.castshadow = False
    floor = spec.worldbody.add_geom()
    floor.name = "floor"
    floor.type = mujoco.mjtGeom.mjGEOM_PLANE
    floor.size = [2.0, 2.0, 0.1]
    floor.pos = [0.0, 0.0, -0.75]
    floor.rgba = [0.35, 0.35, 0.38, 1.0]
    floor.contype = 0
    floor.conaffinity = 0
    floor.group = 1

