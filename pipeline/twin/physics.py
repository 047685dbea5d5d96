"""The twin in Newton: load `twin.usd` with `ModelBuilder.add_usd`, step it with MuJoCo, and check that it rests.

On CPU a single world steps with MuJoCo's C engine through Newton (`SolverMuJoCo(use_mujoco_cpu=True)`); several
worlds, or CUDA, step with MJWarp. Either way the model is the one Newton builds from the USD — the same parser Isaac
Lab uses kit-less — so what passes here is what the RL stage loads.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.workcell.joints import SIM_JOINTS

ROBOT_LINKS = ("base", "shoulder", "upper_arm", "lower_arm", "wrist", "gripper", "jaw")


@dataclass
class TwinModel:
    """A finalized Newton model of the twin and where its parts are."""

    model: object  # newton.Model
    physics_dt: float
    robot_dofs: np.ndarray  # joint_q / joint_qd indices of SIM_JOINTS
    object_bodies: dict[str, int]  # rigid object name -> body index
    object_q: dict[str, int]  # rigid object name -> first joint_q index of its free joint (x y z qx qy qz qw)
    bodies: list[str] = field(default_factory=list)
    joints: list[str] = field(default_factory=list)


class TwinLoadError(RuntimeError):
    """Newton could not load the twin, or it does not hold the expected robot joints and bodies."""


def authored_physics_dt(usd_path: Path) -> float:
    """The physics time step the twin was authored with (its physics scene's newton:timeStepsPerSecond): the step
    usd_twin settles and replays the demos at."""
    from pxr import Usd

    stage = Usd.Stage.Open(str(usd_path))
    for prim in stage.Traverse():
        attr = prim.GetAttribute("newton:timeStepsPerSecond")
        if attr and attr.HasAuthoredValue() and attr.Get():
            return 1.0 / float(attr.Get())
    raise TwinLoadError(f"{usd_path} authors no physics time step (newton:timeStepsPerSecond on its physics scene): "
                        "rebuild it with usd_twin, or set rl.physics_dt_s")


def load_twin(usd_path: Path, device: str = "cpu", worlds: int = 1) -> TwinModel:
    import newton
    import warp as wp

    wp.config.log_level = wp.LOG_WARNING if hasattr(wp, "LOG_WARNING") else wp.config.log_level
    single = newton.ModelBuilder()
    newton.solvers.SolverMuJoCo.register_custom_attributes(single)
    try:
        with warnings.catch_warnings():  # the initial joint state is a non-schema newton:* attribute (see author.py)
            warnings.filterwarnings("ignore", message=".*non-schema attribute.*")
            info = single.add_usd(str(usd_path), load_visual_shapes=False, enable_self_collisions=False)
    except Exception as exc:  # Newton raises plain exceptions for unsupported or broken prims
        raise TwinLoadError(f"Newton could not load {usd_path}: {type(exc).__name__}: {exc}") from exc
    if worlds > 1:
        builder = newton.ModelBuilder()
        newton.solvers.SolverMuJoCo.register_custom_attributes(builder)
        builder.replicate(single, worlds)
    else:
        builder = single
    model = builder.finalize(device=device)
    joints = list(single.joint_label)
    bodies = list(single.body_label)
    missing_joints = [j for j in SIM_JOINTS if not any(label.endswith(f"/joints/{j}") for label in joints)]
    missing_links = [b for b in ROBOT_LINKS if not any(label.endswith(f"/Robot/{b}") for label in bodies)]
    if missing_joints or missing_links:
        raise TwinLoadError(f"Newton loaded {usd_path} without the SO-101's joints {missing_joints} / links "
                            f"{missing_links}: bodies {bodies}, joints {joints}")
    q_start = single.joint_q_start
    robot_dofs = np.array([q_start[next(i for i, lbl in enumerate(joints) if lbl.endswith(f"/joints/{j}"))]
                           for j in SIM_JOINTS])
    object_bodies, object_q = {}, {}
    for b, label in enumerate(bodies):
        if "/Objects/" in label:
            name = label.rsplit("/", 1)[-1]
            object_bodies[name] = b
            joint = next(i for i, child in enumerate(single.joint_child) if child == b)
            object_q[name] = q_start[joint]
    return TwinModel(model, float(info["physics_dt"]), robot_dofs, object_bodies, object_q, bodies, joints)


def make_solver(twin: TwinModel):
    import newton

    model = twin.model
    cpu = not model.device.is_cuda
    # MuJoCo's C engine for one world on CPU (fast, exact); MJWarp for batches and GPUs
    use_cpu = cpu and model.world_count == 1
    return newton.solvers.SolverMuJoCo(model, use_mujoco_cpu=use_cpu, njmax=400, nconmax=200)


@dataclass
class Hull:
    """A convex collider: world-frame vertices when static, body-frame when on `body`."""

    name: str
    vertices: np.ndarray
    body: int | None


def read_hulls(usd_path: Path, twin: TwinModel) -> list[Hull]:
    """The convex collider meshes of the colliders and objects, as authored in the USD (not the robot)."""
    from pxr import Usd, UsdGeom, UsdPhysics

    stage = Usd.Stage.Open(str(usd_path))
    hulls = []
    for root, dynamic in (("/World/Colliders", False), ("/World/Objects", True)):
        top = stage.GetPrimAtPath(root)
        if not top.IsValid():
            continue
        for prim in Usd.PrimRange(top):
            if not (prim.IsA(UsdGeom.Mesh) and prim.HasAPI(UsdPhysics.CollisionAPI)):
                continue
            points = np.asarray(UsdGeom.Mesh(prim).GetPointsAttr().Get(), dtype=np.float64)
            if dynamic:
                body_prim = prim.GetParent()
                while body_prim and not body_prim.HasAPI(UsdPhysics.RigidBodyAPI):
                    body_prim = body_prim.GetParent()
                name = body_prim.GetName()
                local = UsdGeom.Xformable(prim).ComputeLocalToWorldTransform(Usd.TimeCode.Default()) * \
                    UsdGeom.Xformable(body_prim).ComputeLocalToWorldTransform(Usd.TimeCode.Default()).GetInverse()
                m = np.array(local).T  # Gf is row-vector: transpose to act on column vectors
                hulls.append(Hull(f"{name}/{prim.GetName()}", points @ m[:3, :3].T + m[:3, 3],
                                  twin.object_bodies[name]))
            else:
                world = np.array(UsdGeom.Xformable(prim).ComputeLocalToWorldTransform(Usd.TimeCode.Default())).T
                hulls.append(Hull(prim.GetPath().pathString.removeprefix(root + "/"),
                                  points @ world[:3, :3].T + world[:3, 3], None))
    return hulls


def _posed(hull: Hull, body_q: np.ndarray) -> np.ndarray:
    if hull.body is None:
        return hull.vertices
    x = body_q[hull.body]
    return hull.vertices @ _rotation_xyzw(x[3:7]).T + x[:3]


def _rotation_xyzw(q) -> np.ndarray:
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def penetration_depth(a: np.ndarray, b: np.ndarray) -> float:
    """How deep two convex hulls (vertex sets) overlap (metres, 0 when apart): the separating-axis test over both
    hulls' face normals, the smallest overlap of their projections. Exact when the deepest direction is a face normal
    (resting contacts); edge-edge directions are not tried, so otherwise an upper bound."""
    from scipy.spatial import ConvexHull

    lo = np.maximum(a.min(0), b.min(0))
    hi = np.minimum(a.max(0), b.max(0))
    if np.any(lo > hi):  # bounding boxes apart: no contact
        return 0.0
    normals = np.concatenate([ConvexHull(a).equations[:, :3], ConvexHull(b).equations[:, :3]])
    normals = np.unique(normals.round(9), axis=0)
    pa, pb = a @ normals.T, b @ normals.T
    overlap = np.minimum(pa.max(0) - pb.min(0), pb.max(0) - pa.min(0))
    return float(max(0.0, overlap.min()))


def max_penetration(hulls: list[Hull], body_q: np.ndarray) -> tuple[float, str]:
    """Deepest overlap between an object's hull and any other part's hull (objects' own hulls excluded)."""
    worst, where = 0.0, ""
    posed = [(h, _posed(h, body_q)) for h in hulls]
    for i, (h, a) in enumerate(posed):
        if h.body is None:
            continue
        for j, (g, b) in enumerate(posed):
            if j == i or g.body == h.body or (g.body is not None and j < i):
                continue
            depth = penetration_depth(a, b)
            if depth > worst:
                worst, where = depth, f"{h.name} in {g.name}"
    return worst, where


def settle(usd_path: Path, seconds: float, device: str = "cpu", progress=None, twin: TwinModel | None = None) -> dict:
    """Simulate the twin for `seconds` with the robot holding its authored pose; report how far each object moved,
    how fast it still moves, the deepest hull overlap at the start and at the end, and the robot's pose error."""
    import warp as wp

    twin = twin or load_twin(usd_path, device)
    model = twin.model
    solver = make_solver(twin)
    import newton

    s0, s1, control = model.state(), model.state(), model.control()
    newton.eval_fk(model, model.joint_q, model.joint_qd, s0)
    hulls = read_hulls(usd_path, twin)
    start_q = s0.body_q.numpy().copy()
    home = control.joint_target_q.numpy()[twin.robot_dofs].copy()  # the authored drive targets
    pen0, where0 = max_penetration(hulls, start_q)
    steps = int(round(seconds / twin.physics_dt))
    tail = max(1, int(round(0.1 / twin.physics_dt)))  # speed: displacement over the last 0.1 s
    before_tail = None
    bar = progress(steps) if progress else None
    for i in range(steps):
        if i == steps - tail:
            before_tail = s0.body_q.numpy().copy()
        solver.step(s0, s1, control, None, twin.physics_dt)
        s0, s1 = s1, s0
        if bar is not None:
            bar.update(1)
    wp.synchronize()
    if bar is not None:
        bar.close()
    end_q = s0.body_q.numpy()
    pen1, where1 = max_penetration(hulls, end_q)
    objects = {}
    for name, b in twin.object_bodies.items():
        drift = float(np.linalg.norm(end_q[b, :3] - start_q[b, :3]))
        speed = float(np.linalg.norm(end_q[b, :3] - before_tail[b, :3]) / (tail * twin.physics_dt))
        dot = abs(float(np.dot(end_q[b, 3:7], start_q[b, 3:7]))) / (np.linalg.norm(end_q[b, 3:7]) *
                                                                   np.linalg.norm(start_q[b, 3:7]))
        objects[name] = {"drift_mm": drift * 1e3, "speed_m_s": speed,
                         "rotation_deg": math.degrees(2 * math.acos(min(1.0, dot))),
                         "start": start_q[b, :3].tolist(), "end": end_q[b, :3].tolist()}
    joint_error = np.degrees(np.abs(s0.joint_q.numpy()[twin.robot_dofs] - home))
    return {
        "simulated_s": seconds, "steps": steps, "physics_dt": twin.physics_dt,
        "objects": objects,
        "penetration_start_mm": pen0 * 1e3, "penetration_start_where": where0,
        "penetration_end_mm": pen1 * 1e3, "penetration_end_where": where1,
        "home_error_deg": dict(zip(SIM_JOINTS, joint_error.round(3).tolist())),
        "max_home_error_deg": float(joint_error.max()),
        "finite": bool(np.all(np.isfinite(end_q))),
    }


def settle_problems(result: dict, cfg) -> list[str]:
    """Why a settle result fails the twin's gates (empty when it passes)."""
    problems = []
    if not result["finite"]:
        problems.append("the simulation diverged (non-finite body poses)")
    for name, o in result["objects"].items():
        if o["drift_mm"] > cfg.max_settle_drift_mm:
            problems.append(f"{name} moved {o['drift_mm']:.1f} mm while settling (max {cfg.max_settle_drift_mm})")
        if o["speed_m_s"] > cfg.max_rest_speed_m_s:
            problems.append(f"{name} still moves at {o['speed_m_s']:.3f} m/s after {result["simulated_s"]} s")
    for when in ("start", "end"):
        depth = result[f"penetration_{when}_mm"]
        if depth > cfg.max_penetration_mm:
            problems.append(f"penetration at the {when} {depth:.1f} mm ({result[f'penetration_{when}_where']}) > "
                            f"{cfg.max_penetration_mm} mm")
    if result["max_home_error_deg"] > cfg.max_home_error_deg:
        problems.append(f"the robot drifts {result['max_home_error_deg']:.2f} deg from its home pose "
                        f"(max {cfg.max_home_error_deg})")
    return problems
