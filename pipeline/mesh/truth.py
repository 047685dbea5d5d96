"""Ground truth for the mesh gates, where the capture has it (the sim source): the workcell surfaces the cameras saw,
the objects the workcell holds, and the Chamfer distance between point sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.capture.stage import Capture
from pipeline.mesh.config import MeshConfig
from pipeline.mesh.fusion import in_workspace, near

#: world-body geoms of the workcell that are not task objects
_NOT_OBJECTS = ("table", "floor")


def reference_points(capture: Capture, cfg: MeshConfig, robot: np.ndarray | None, voxel: float = 0.002
                     ) -> np.ndarray | None:
    """The capture's ground-truth depth (the sim renders it) back-projected, cropped like the reconstruction and
    without the robot: the surfaces of the workcell the cameras saw. None when the capture has no depth."""
    K, clouds = capture.K, []
    for i, frame in enumerate(capture.frames):
        depth = capture.depth(i)
        if depth is None:
            return None
        ys, xs = np.nonzero((depth > 0) & (depth < cfg.max_depth_m))
        z = depth[ys, xs]
        cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], 1)
        c2w = np.linalg.inv(frame.viewmat())
        clouds.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
    points = np.concatenate(clouds)
    points = points[in_workspace(points, cfg)]
    if robot is not None:
        points = points[~near(points, robot, cfg.robot_clearance_m)]
    # one point per `voxel` cell, so surfaces seen from many views do not outweigh the rest
    _, first = np.unique(np.floor(points / voxel).astype(np.int64), axis=0, return_index=True)
    return points[np.sort(first)]


def chamfer_mm(reconstruction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean nearest-neighbour distances both ways (mm) and their mean (the symmetric Chamfer distance)."""
    from scipy.spatial import cKDTree

    to_reference = cKDTree(reference).query(reconstruction)[0]
    to_reconstruction = cKDTree(reconstruction).query(reference)[0]
    return {"chamfer_mm": 500.0 * float(to_reference.mean() + to_reconstruction.mean()),
            "reconstruction_to_truth_mm": 1000.0 * float(to_reference.mean()),
            "truth_to_reconstruction_mm": 1000.0 * float(to_reconstruction.mean()),
            "reconstruction_to_truth_p90_mm": 1000.0 * float(np.percentile(to_reference, 90)),
            "truth_to_reconstruction_p90_mm": 1000.0 * float(np.percentile(to_reconstruction, 90))}


def ground_truth_objects(workcell_xml: Path, scene_state: dict) -> list[dict]:
    """The task objects of the sim workcell at capture time: each free body (the cube, posed as the capture recorded
    it) and each group of static world geoms sharing a name prefix (`bin_floor`, `bin_wall_px`... -> `bin`): world
    bounding box, oriented size (footprint long side, short side, height; metres), yaw of the footprint's long side
    (degrees), solid volume (the sum of the box geoms), mass (free bodies; static objects have none)."""
    import mujoco

    from pipeline.workcell.build import ROBOT_BODIES

    model = mujoco.MjModel.from_xml_path(str(workcell_xml))
    data = mujoco.MjData(model)
    free_bodies = set()
    for j in range(model.njnt):
        if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            free_bodies.add(int(model.jnt_bodyid[j]))
            if "cube_position" in scene_state:
                adr = model.jnt_qposadr[j]
                data.qpos[adr:adr + 3] = scene_state["cube_position"]
                data.qpos[adr + 3:adr + 7] = scene_state["cube_quat_wxyz"]
    mujoco.mj_kinematics(model, data)
    robot = {model.body(name).id for name in ROBOT_BODIES}
    groups: dict[str, list[tuple[np.ndarray, np.ndarray, float]]] = {}
    bodies: dict[str, int] = {}
    for g in range(model.ngeom):
        body = model.geom_bodyid[g]
        if body in robot:
            continue
        name = model.body(body).name if body != 0 else model.geom(g).name.split("_")[0]
        if name in _NOT_OBJECTS or model.geom_type[g] != mujoco.mjtGeom.mjGEOM_BOX:
            continue
        half = model.geom_size[g]
        rot = data.geom_xmat[g].reshape(3, 3)
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * half
        groups.setdefault(name, []).append((corners @ rot.T + data.geom_xpos[g], rot, float(np.prod(2 * half))))
        bodies[name] = int(body)
    objects = []
    for name, geoms in sorted(groups.items()):
        corners = np.concatenate([c for c, _, _ in geoms])
        lo, hi = corners.min(0), corners.max(0)
        # the footprint's axes: those of the largest box (a cube's own, a bin's floor)
        rot = max(geoms, key=lambda item: item[2])[1]
        yaw = float(np.arctan2(rot[1, 0], rot[0, 0]))
        c, s = np.cos(yaw), np.sin(yaw)
        local = corners[:, :2] @ np.array([[c, -s], [s, c]])
        extent = local.max(0) - local.min(0)
        if extent[1] > extent[0]:
            extent, yaw = extent[::-1], yaw + np.pi / 2
        body = bodies[name]
        dynamic = body in free_bodies
        objects.append({"name": name, "bbox_min": lo.tolist(), "bbox_max": hi.tolist(),
                        "centre": ((lo + hi) / 2).tolist(),
                        "size_m": [float(extent[0]), float(extent[1]), float(hi[2] - lo[2])],
                        "yaw_deg": float(np.degrees(yaw)), "volume_m3": float(sum(v for _, _, v in geoms)),
                        "mass_kg": float(model.body_mass[body]) if dynamic else None, "dynamic": dynamic})
    return objects


def load_scene_state(capture_dir: Path) -> dict | None:
    path = Path(capture_dir) / "scene_state.json"
    return json.loads(path.read_text()) if path.is_file() else None
