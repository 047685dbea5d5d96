"""From a Gaussian splat to one cleaned surface mesh: depth rendered at the capture views, fused in an Open3D TSDF.

Also the robot's own surfaces at the capture's joint state: they are cut out (the twin gets the robot from its
official USD).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.capture.stage import Capture
from pipeline.mesh.config import MeshConfig
from pipeline.splat.rasterize import render_surface_depth


class MeshError(ValueError):
    """The splat or capture cannot give a collision mesh: nothing rendered, no support plane, no robot state..."""


def in_workspace(points: np.ndarray, cfg: MeshConfig) -> np.ndarray:
    return np.all((points >= np.array(cfg.workspace_min)) & (points <= np.array(cfg.workspace_max)), axis=1)


def render_depths(splat: dict[str, torch.Tensor], capture: Capture, cfg: MeshConfig, device: torch.device,
                  progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Surface depth (metres, 0 = none) of the splat at every capture view, with the training rasterizer's math."""
    means, quats = splat["means"].to(device), splat["quats"].to(device)
    scales, opacities = torch.exp(splat["scales"]).to(device), torch.sigmoid(splat["opacities"]).to(device)
    K = torch.tensor(capture.K, dtype=torch.float32, device=device)
    depths = []
    for i, frame in enumerate(capture.frames):
        viewmat = torch.tensor(frame.viewmat(), dtype=torch.float32, device=device)
        depth, alpha = render_surface_depth(means, quats, scales, opacities, viewmat, K, capture.width,
                                            capture.height, band=(cfg.surface_band_front_m, cfg.surface_band_back_m))
        depth = depth.cpu().numpy().astype(np.float32)
        depth[(alpha.cpu().numpy() < cfg.min_pixel_opacity) | (depth > cfg.max_depth_m)] = 0.0
        depths.append(drop_depth_edges(depth, cfg.depth_edge_m))
        if progress:
            progress(i + 1, len(capture.frames))
    return depths


def drop_depth_edges(depth: np.ndarray, jump: float) -> np.ndarray:
    """Pixels next to a depth jump larger than `jump` carry no depth. A pixel on an object's silhouette is partly
    object, partly background, and takes the object's depth: fused as is, every view's silhouette would widen the
    object by about a pixel. Without them the neighbouring views' free space carves the true edge."""
    padded = np.pad(depth, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    neighbours = np.stack([padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
    edge = np.any((np.abs(neighbours - centre) > jump) & (neighbours > 0), axis=0)
    return np.where(edge, 0.0, depth).astype(depth.dtype)


def fuse_tsdf(capture: Capture, depths: list[np.ndarray], cfg: MeshConfig):
    """Open3D ScalableTSDFVolume over all views (colour from the capture photos) -> triangle mesh in the base frame."""
    import open3d as o3d

    volume = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=cfg.voxel_m, sdf_trunc=cfg.trunc_voxels * cfg.voxel_m,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8)
    K = capture.K
    # Open3D puts pixel centres at integer coordinates, the capture (like gsplat) at +0.5: shift the principal point.
    intrinsic = o3d.camera.PinholeCameraIntrinsic(capture.width, capture.height, K[0, 0], K[1, 1], K[0, 2] - 0.5,
                                                  K[1, 2] - 0.5)
    for i, depth in enumerate(depths):
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(capture.image(i))), o3d.geometry.Image(np.ascontiguousarray(depth)),
            depth_scale=1.0, depth_trunc=cfg.max_depth_m, convert_rgb_to_intensity=False)
        volume.integrate(rgbd, intrinsic, capture.frames[i].viewmat().astype(np.float64))
    return volume.extract_triangle_mesh()


def remove_vertices(mesh, drop: np.ndarray):
    mesh.remove_vertices_by_mask(drop)
    mesh.remove_unreferenced_vertices()
    return mesh


def clean_mesh(mesh, cfg: MeshConfig):
    """Degenerate/duplicate faces, non-manifold edges and small floating components out, then quadric decimation
    to at most `target_triangles`."""
    mesh.remove_duplicated_vertices()
    mesh.remove_degenerate_triangles()
    mesh.remove_duplicated_triangles()
    mesh.remove_non_manifold_edges()
    if len(mesh.triangles):
        clusters, counts, _ = mesh.cluster_connected_triangles()
        clusters, counts = np.asarray(clusters), np.asarray(counts)
        mesh.remove_triangles_by_mask(counts[clusters] < cfg.min_component_triangles)
        mesh.remove_unreferenced_vertices()
    if len(mesh.triangles) > cfg.target_triangles:
        mesh = mesh.simplify_quadric_decimation(cfg.target_triangles)
        mesh.remove_degenerate_triangles()
        mesh.remove_unreferenced_vertices()
    mesh.compute_vertex_normals()
    return mesh


def robot_surface_points(workcell_xml: Path, joint_positions_rad, spacing_m: float = 0.002) -> np.ndarray:
    """Points on every surface of the robot's links (visual and collision meshes) at the given joint angles (SO-101
    order), from the compiled workcell model's forward kinematics."""
    import mujoco
    import trimesh

    from pipeline.workcell.build import ROBOT_BODIES
    from pipeline.workcell.joints import SIM_JOINTS

    model = mujoco.MjModel.from_xml_path(str(workcell_xml))
    data = mujoco.MjData(model)
    for name, q in zip(SIM_JOINTS, joint_positions_rad, strict=True):
        data.qpos[model.joint(name).qposadr[0]] = q
    mujoco.mj_kinematics(model, data)
    robot_bodies = {model.body(name).id for name in ROBOT_BODIES}
    rng = np.random.default_rng(0)
    points = []
    for g in range(model.ngeom):
        if model.geom_bodyid[g] not in robot_bodies or model.geom_type[g] != mujoco.mjtGeom.mjGEOM_MESH:
            continue
        m = model.geom_dataid[g]
        verts = model.mesh_vert[model.mesh_vertadr[m]:model.mesh_vertadr[m] + model.mesh_vertnum[m]]
        faces = model.mesh_face[model.mesh_faceadr[m]:model.mesh_faceadr[m] + model.mesh_facenum[m]]
        part = trimesh.Trimesh(verts @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g], faces, process=False)
        count = max(int(part.area / spacing_m**2), 100)
        points.append(np.asarray(trimesh.sample.sample_surface(part, count, seed=rng)[0]))
        points.append(part.vertices)
    if not points:
        raise MeshError(f"{workcell_xml}: no robot link meshes found (bodies {', '.join(ROBOT_BODIES)})")
    return np.concatenate(points)


def near(points: np.ndarray, targets: np.ndarray, distance: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    if len(points) == 0 or len(targets) == 0:
        return np.zeros(len(points), dtype=bool)
    return cKDTree(targets).query(points, distance_upper_bound=distance)[0] <= distance
