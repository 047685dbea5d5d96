"""Stage `collision_mesh`: the splat becomes simulation-ready collision geometry.

Framework-free. Depth rendered from the splat at every capture view (the training rasterizer's math) is fused in an
Open3D TSDF; the mesh is cropped to the workspace, stripped of the robot (posed at the capture's joint state; the
twin takes the robot from its own USD), cleaned and decimated. RANSAC finds the support plane; what stands on it is
clustered into objects, each closed into a solid, refitted to its outline in the capture photos (silhouette.py) and
decomposed into convex hulls by CoACD; the support becomes a box. Where the capture has ground-truth depth (the sim
source) the mesh is scored against it (Chamfer, mm).

Writes to `out_dir`:
  scene_visual.obj   the cleaned mesh (robot base frame, metres)
  hulls/*.obj        convex hulls, `<part>_<k>.obj`
  scene.json         the parts: name, role (support | object), hull files, bounding box, size, volume, mass
  metrics.json       Chamfer to ground truth, counts, gate inputs, timings
  preview.png        the hulls drawn over capture photos, and a 3D view
  config.json        the recipe section and the md5s of the splat and capture it was made from

User guide: docs/mesh.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.common.artifacts import file_md5, replace_dir, staging_dir, write_config, write_metrics
from pipeline.capture.stage import Capture
from pipeline.common.recipe import Recipe
from pipeline.mesh.config import MeshConfig
from pipeline.mesh.fusion import (MeshError, clean_mesh, fuse_tsdf, in_workspace, near, remove_vertices,
                                  render_depths, robot_surface_points)
from pipeline.mesh.segment import cluster_objects, fit_support_plane, footprint_centre, height_field_solid, support_box
from pipeline.mesh.silhouette import SilhouetteUnavailable, fit_prism, fit_solid_into, hollow_top, prism_solid
from pipeline.mesh.object_gate import object_gate, summary_line
from pipeline.mesh.truth import chamfer_mm, ground_truth_objects, load_scene_state, reference_points
from pipeline.common.ply import PlyError
from pipeline.splat.gaussians import load_ply
from pipeline.splat.stage import capture_md5

SUPPORT_NAME = "table"


def build_collision_mesh(recipe: Recipe, capture_dir: Path, splat_dir: Path, workcell_xml: Path, out_dir: Path,
                         device: str = "auto", log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Reconstruct, split, decompose and export; returns the metrics (also in `out_dir/metrics.json`)."""
    cfg = recipe.mesh
    t0 = time.perf_counter()
    capture = Capture.load(capture_dir)
    splat = _load_splat(Path(splat_dir) / "splat.ply")
    if device == "cuda" and not torch.cuda.is_available():
        raise MeshError("device cuda requested, but torch sees no CUDA device")
    torch_device = torch.device("cuda" if torch.cuda.is_available() and device != "cpu" else "cpu")
    scene_state = load_scene_state(capture_dir)
    robot = _robot_points(cfg, scene_state, workcell_xml) if cfg.remove_robot else None

    log(f"rendering the splat's surface depth at {len(capture.frames)} capture views on {torch_device.type}")
    bar = _bar(len(capture.frames), "depth", progress)
    depths = render_depths(splat, capture, cfg, torch_device, progress=lambda i, n: bar.update(1))
    bar.close()
    t_render = time.perf_counter() - t0
    mesh = fuse_tsdf(capture, depths, cfg)
    raw_triangles = len(mesh.triangles)
    vertices = np.asarray(mesh.vertices)
    drop = ~in_workspace(vertices, cfg)
    if robot is not None:
        drop |= near(vertices, robot, cfg.robot_clearance_m)
    mesh = clean_mesh(remove_vertices(mesh, drop), cfg)
    if len(mesh.triangles) == 0:
        raise MeshError(f"the splat gives no surface inside the workspace {cfg.workspace_min}..{cfg.workspace_max} "
                        f"({raw_triangles} triangles fused before cropping): is the splat empty or transparent, "
                        "or the workspace wrong?")
    log(f"TSDF ({1000 * cfg.voxel_m:.1f} mm voxels): {raw_triangles} triangles, {len(mesh.triangles)} after "
        "cropping, removing the robot, cleaning and decimation")
    points = _surface_samples(mesh, spacing=cfg.voxel_m / 2)

    plane, on_plane = fit_support_plane(points, cfg, seed=cfg.seed)
    log(f"support plane: height {1000 * plane.origin[2]:.1f} mm under the support's centre, tilt "
        f"{plane.tilt_deg:.2f} deg, {100 * plane.inlier_fraction:.0f} % of the surface")
    clusters = cluster_objects(points, plane, points[on_plane], cfg)
    if robot is not None:
        # what the robot cut left of its outline (the splat blurs its silhouette) touches the cut: not an object
        touching = [near(points[c], robot, cfg.robot_clearance_m + cfg.cluster_eps_m).any() for c in clusters]
        clusters = [c for c, residue in zip(clusters, touching) if not residue]
        if any(touching):
            log(f"{sum(touching)} cluster(s) next to the robot dropped as robot residue")
    log(f"{len(clusters)} object(s) on the support")

    truth_objects = ground_truth_objects(workcell_xml, scene_state) if scene_state and Path(workcell_xml).is_file() \
        else None
    parts = [{"name": SUPPORT_NAME, "role": "support", "solid": support_box(plane, points[on_plane],
                                                                               cfg.support_thickness_m), "size": None}]
    for k, cluster in enumerate(clusters):
        solid, size = height_field_solid(points[cluster], points, plane, cfg.solid_cell_m)
        parts.append({"name": f"object_{k}", "role": "object", "solid": solid, "size": size,
                      "centre_xy": footprint_centre(plane.to_plane(points[cluster]), size)})
    if cfg.silhouette_refine and len(parts) > 1:
        _name_objects(parts, truth_objects)  # so that the log names them; again below, from the refitted centres
        _refine_with_photos(parts, plane, points, capture, robot, cfg, log, progress)
    _name_objects(parts, truth_objects)

    staging = staging_dir(Path(out_dir))
    (staging / "hulls").mkdir(parents=True)
    import coacd

    coacd.set_log_level("error")
    bar = _bar(len(parts), "CoACD", progress)
    for part in parts:
        part["hulls"] = [part["solid"]] if part["role"] == "support" else _decompose(part["solid"], cfg)
        part["hull_files"] = []
        for i, hull in enumerate(part["hulls"]):
            name = f"hulls/{part['name']}_{i}.obj"
            hull.export(staging / name)
            part["hull_files"].append(name)
        bar.update(1)
    bar.close()
    mesh_trimesh = _to_trimesh(mesh)
    mesh_trimesh.export(staging / "scene_visual.obj")

    hull_checks = check_hulls(staging)
    scene = _scene_json(parts, plane, cfg, truth_objects)
    (staging / "scene.json").write_text(json.dumps(scene, indent=2))
    accuracy = None
    reference = reference_points(capture, cfg, robot)
    if reference is not None and len(reference):
        accuracy = chamfer_mm(points, reference)
        log(f"Chamfer distance to the capture's ground-truth depth: {accuracy['chamfer_mm']:.2f} mm")
    objects = [p for p in scene["parts"] if p["role"] == "object"]
    gate = object_gate(scene["parts"], truth_objects, cfg.object_gates)
    for name, errors in gate["objects"].items():
        log("object " + summary_line(name, errors))
    for problem in gate["problems"]:
        log(f"object geometry gate: {problem}")
    metrics = {
        "parts": len(scene["parts"]), "objects_found": len(objects), "objects_expected": cfg.expected_objects,
        "object_names": [p["name"] for p in objects],
        "hulls": sum(len(p["hulls"]) for p in scene["parts"]),
        "hulls_per_part": {p["name"]: len(p["hulls"]) for p in scene["parts"]},
        "max_hulls_per_object": cfg.max_hulls_per_object, "max_hulls": cfg.max_hulls,
        "hulls_failing": [c for c in hull_checks if not c["ok"]],
        "hull_count_problems": hull_count_problems(scene, cfg.max_hulls_per_object, cfg.max_hulls),
        "support_height_mm": round(1000 * float(plane.origin[2]), 2), "support_tilt_deg": round(plane.tilt_deg, 3),
        "support_inlier_fraction": round(plane.inlier_fraction, 3),
        "visual_triangles": len(mesh.triangles), "fused_triangles": raw_triangles,
        **({k: round(v, 3) for k, v in accuracy.items()} if accuracy else {"chamfer_mm": None}),
        "max_chamfer_mm": cfg.max_chamfer_mm, "ground_truth": "capture depth" if accuracy else None,
        "object_geometry": gate["objects"], "object_gate_measured": gate["measured"],
        "object_gate_problems": gate["problems"],
        "render_seconds": round(t_render, 1), "seconds": round(time.perf_counter() - t0, 1),
        "device": torch_device.type, "views": len(capture.frames),
    }
    _preview(capture, scene, staging, staging / "preview.png")
    write_config(staging, {"mesh": cfg.model_dump(mode="json"), "capture_md5": capture_md5(capture),
                           "splat_md5": file_md5(Path(splat_dir) / "splat.ply"), "robot_joint_positions_rad":
                           None if robot is None else _robot_joints(cfg, scene_state)})
    write_metrics(staging, metrics)
    replace_dir(staging, Path(out_dir))
    return metrics


def _load_splat(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MeshError(f"no splat at {path}: materialize `gaussian_splat` first")
    try:
        splat = load_ply(path)
    except (PlyError, KeyError, ValueError) as exc:
        raise MeshError(f"{path}: not a readable 3DGS PLY: {exc}") from exc
    if len(splat["means"]) == 0:
        raise MeshError(f"{path}: the splat holds no Gaussians, so there is no surface to mesh")
    return splat


def _refine_with_photos(parts: list[dict], plane, points: np.ndarray, capture: Capture, robot: np.ndarray | None,
                        cfg: MeshConfig, log: Callable[[str], None], progress: bool) -> None:
    """Each object's pose and size fitted to its outline in the capture photos (`silhouette.fit_prism`), in place:
    a solid object becomes the fitted prism, a hollow one (a bin) keeps its reconstructed walls, stretched onto it;
    `part["silhouette"]` says what was fitted and whether it was used. The robot and the other objects hide what is
    behind them."""
    import math

    objects = [p for p in parts if p["role"] == "object"]
    local = plane.to_plane(points)
    samples = {id(p): np.asarray(p["solid"].sample(2000, seed=0)) for p in objects}
    bar = _bar(len(objects), "silhouettes", progress)
    for part in objects:
        occluders = ([robot] if robot is not None else []) + [samples[id(o)] for o in objects if o is not part]
        size, yaw = np.asarray(part["size"]["size_m"]), math.radians(part["size"]["yaw_deg"])
        before = " x ".join(f"{1000 * v:.1f}" for v in size)
        try:
            fit = fit_prism(capture, plane, part["centre_xy"], yaw, size, occluders,
                            margin_m=cfg.silhouette_margin_m, supersample=cfg.silhouette_supersample,
                            min_views=cfg.silhouette_min_views)
        except SilhouetteUnavailable as exc:
            part["silhouette"] = {"used": False, "why": str(exc)}
            log(f"{part['name']}: the photos do not refine it ({exc}); splat geometry kept, {before} mm")
            continue
        finally:
            bar.update(1)
        used = fit.iou >= cfg.silhouette_min_iou
        part["silhouette"] = {"used": used, **fit.summary(), "splat_size_mm": (1000 * size).round(2).tolist(),
                              "splat_yaw_deg": round(part["size"]["yaw_deg"], 2)}
        if not used:
            part["silhouette"]["why"] = (f"silhouette IoU {fit.iou:.2f} < mesh.silhouette_min_iou "
                                         f"{cfg.silhouette_min_iou}: not an upright box or cylinder, or mostly hidden")
            log(f"{part['name']}: the photos do not refine it ({part['silhouette']['why']}); splat geometry kept, "
                f"{before} mm")
            continue
        # silhouettes cannot see into a bin: where the splat's surface is low inside the footprint, its solid keeps
        # the walls and is stretched onto the fitted prism; any other object becomes the prism
        hollow = hollow_top(local, part["centre_xy"], yaw, size)
        part["solid"] = fit_solid_into(part["solid"], plane, yaw, fit) if hollow else prism_solid(plane, fit)
        part["size"] = {"size_m": fit.size_m.tolist(), "yaw_deg": math.degrees(fit.yaw_rad)}
        part["silhouette"]["solid"] = "the splat's hollow solid, moved and stretched" if hollow else "the fitted prism"
        log(f"{part['name']}: the photos refine it from {before} mm to "
            f"{' x '.join(f'{1000 * v:.1f}' for v in fit.size_m)} mm ({fit.footprint}, silhouette IoU {fit.iou:.2f} "
            f"over {fit.views} views; {part['silhouette']['solid']})")
    bar.close()


def _robot_joints(cfg: MeshConfig, scene_state: dict | None) -> list[float]:
    if scene_state and scene_state.get("joint_positions_rad") is not None:
        return list(scene_state["joint_positions_rad"])
    if cfg.robot_joint_positions_rad is not None:
        return list(cfg.robot_joint_positions_rad)
    raise MeshError("the capture has no robot joint state (scene_state.json), so the robot cannot be cut out of the "
                    "mesh: set mesh.robot_joint_positions_rad to the arm's pose during the capture (radians, SO-101 "
                    "joint order), or mesh.remove_robot: false if the robot is not in the pictures")


def _robot_points(cfg: MeshConfig, scene_state: dict | None, workcell_xml: Path) -> np.ndarray:
    joints = _robot_joints(cfg, scene_state)
    if not Path(workcell_xml).is_file():
        raise MeshError(f"no robot model at {workcell_xml} to cut the robot out with: materialize `sim_workcell`")
    return robot_surface_points(workcell_xml, joints)


def _surface_samples(mesh, spacing: float) -> np.ndarray:
    """Evenly spread points on the mesh (about one per spacing²), seeded, plus its vertices."""
    import open3d as o3d

    o3d.utility.random.seed(0)
    count = int(min(max(mesh.get_surface_area() / spacing**2, 1000), 400_000))
    return np.concatenate([np.asarray(mesh.sample_points_uniformly(count).points), np.asarray(mesh.vertices)])


def _decompose(solid, cfg: MeshConfig) -> list:
    """Convex hulls of one object's solid. A solid that fills at least `convex_fill` of its own convex hull is one
    hull (a box: the reconstruction's voxel steps would otherwise read as concavities); any other goes through CoACD
    (no cap on the count: the hull-count gate judges it), each piece re-hulled so it is exactly convex and closed,
    sub-voxel slivers dropped."""
    import coacd
    import trimesh

    if solid.volume >= cfg.convex_fill * solid.convex_hull.volume:
        pieces = [(solid.vertices, solid.faces)]
    else:
        pieces = coacd.run_coacd(coacd.Mesh(np.asarray(solid.vertices), np.asarray(solid.faces)),
                                 threshold=cfg.coacd_threshold, max_convex_hull=-1, seed=cfg.seed,
                                 mcts_iterations=cfg.coacd_mcts_iterations)
    # vertices snapped to 0.1 mm (far below what the capture resolves): CoACD's pieces have nearly coplanar faces
    # that rounding in the OBJ text would otherwise turn slightly reflex
    hulls = [trimesh.Trimesh(np.round(np.asarray(v) / 1e-4) * 1e-4, f).convex_hull for v, f in pieces]
    return [h for h in hulls if h.volume > cfg.voxel_m**3] or hulls


def check_hulls(mesh_dir: Path) -> list[dict]:
    """Each hull file as trimesh reads it back: watertight, convex, positive volume."""
    import trimesh

    results = []
    for path in sorted((Path(mesh_dir) / "hulls").glob("*.obj")):
        hull = trimesh.load(path, force="mesh", process=True)
        watertight, convex, volume = bool(hull.is_watertight), bool(hull.is_convex), float(hull.volume)
        results.append({"file": f"hulls/{path.name}", "watertight": watertight, "convex": convex,
                        "volume_m3": volume, "ok": watertight and convex and volume > 0})
    return results


def hull_count_problems(scene: dict, max_per_object: int, max_total: int) -> list[str]:
    """What breaks the hull-count bounds: a part without hulls, an object over `max_per_object`, a scene over
    `max_total` (many hulls mean a noisy reconstruction, and slow contacts)."""
    problems = [f"{p['name']} has no hull" for p in scene["parts"] if not p["hulls"]]
    problems += [f"{p['name']}: {len(p['hulls'])} hulls > {max_per_object}" for p in scene["parts"]
                 if p["role"] == "object" and len(p["hulls"]) > max_per_object]
    total = sum(len(p["hulls"]) for p in scene["parts"])
    return problems + ([f"{total} hulls in all > {max_total}"] if total > max_total else [])


def _name_objects(parts: list[dict], truth: list[dict] | None) -> None:
    """Found objects take the name of the ground-truth object whose footprint holds their centre (sim captures);
    the others keep `object_<k>`."""
    if not truth:
        return
    taken = set()
    for k, part in enumerate(p for p in parts if p["role"] == "object"):
        part["name"] = f"object_{k}"
        centre = part["solid"].bounds.mean(0)
        for obj in truth:
            lo, hi = np.array(obj["bbox_min"]), np.array(obj["bbox_max"])
            if obj["name"] not in taken and np.all(centre[:2] >= lo[:2]) and np.all(centre[:2] <= hi[:2]):
                part["name"] = obj["name"]
                taken.add(obj["name"])
                break


def _scene_json(parts: list[dict], plane, cfg: MeshConfig, truth: list[dict] | None) -> dict:
    out = []
    for part in parts:
        solid = part["solid"]
        lo, hi = solid.bounds
        volume = float(solid.volume)
        entry = {"name": part["name"], "role": part["role"], "hulls": part["hull_files"],
                 "bbox_min": lo.tolist(), "bbox_max": hi.tolist(), "centre": ((lo + hi) / 2).tolist(),
                 "volume_m3": volume,
                 "hull_volume_m3": float(sum(h.volume for h in part["hulls"])),
                 "mass_kg": None if part["role"] == "support" else volume * cfg.object_density_kg_m3,
                 "static": part["role"] == "support"}
        if part["size"] is not None:
            entry["size_m"], entry["yaw_deg"] = part["size"]["size_m"], part["size"]["yaw_deg"]
        if "silhouette" in part:
            entry["silhouette"] = part["silhouette"]
        match = next((t for t in truth or [] if t["name"] == part["name"]), None)
        if match is not None:
            true_size = np.array(match["bbox_max"]) - np.array(match["bbox_min"])
            entry["ground_truth"] = {"centre": match["centre"], "aabb_size_m": true_size.tolist(),
                                     "centre_error_mm": 1000 * float(np.linalg.norm(
                                         np.array(entry["centre"]) - np.array(match["centre"])))}
        out.append(entry)
    return {"frame": "robot base: metres, z up", "support_plane": {
        "normal": plane.normal.tolist(), "offset": float(plane.offset), "tilt_deg": plane.tilt_deg},
        "density_kg_m3": cfg.object_density_kg_m3, "parts": out}


def _to_trimesh(mesh):
    import trimesh

    colors = (np.asarray(mesh.vertex_colors) * 255).round().astype(np.uint8) if mesh.has_vertex_colors() else None
    return trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles), vertex_colors=colors, process=False)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


_PART_COLOURS = ("#8c8c8c", "#e6194b", "#4363d8", "#3cb44b", "#f58231", "#911eb4", "#42d4f4", "#f032e6")


def _preview(capture: Capture, scene: dict, mesh_dir: Path, path: Path, views: int = 2) -> None:
    """The hulls drawn over capture photos (painter's algorithm: far triangles first) and a 3D view of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import trimesh
    from matplotlib.collections import PolyCollection
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    hulls = [(i, trimesh.load(mesh_dir / f, force="mesh")) for i, part in enumerate(scene["parts"])
             for f in part["hulls"]]
    picks = np.linspace(0, len(capture.frames) - 1, views + 1)[:-1].round().astype(int)
    fig = plt.figure(figsize=(4.2 * (views + 1), 3.6))
    for n, index in enumerate(picks):
        ax = fig.add_subplot(1, views + 1, n + 1)
        ax.imshow(capture.image(index))
        viewmat, K = capture.frames[index].viewmat(), capture.K
        polys, colours, depth = [], [], []
        for part_index, hull in hulls:
            cam = hull.vertices @ viewmat[:3, :3].T + viewmat[:3, 3]
            if np.any(cam[:, 2] <= 0.01):
                continue
            pix = cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]] - 0.5
            tri = hull.faces
            polys.extend(pix[tri])
            depth.extend(cam[tri, 2].mean(1))
            colours.extend([_PART_COLOURS[part_index % len(_PART_COLOURS)]] * len(tri))
        order = np.argsort(depth)[::-1]
        ax.add_collection(PolyCollection([polys[i] for i in order], facecolors=[colours[i] for i in order],
                                         edgecolors="black", linewidths=0.1, alpha=0.45))
        ax.set_xlim(0, capture.width), ax.set_ylim(capture.height, 0), ax.axis("off")
        ax.set_title(f"capture view {index}: hulls over the photo", fontsize=8)
    ax = fig.add_subplot(1, views + 1, views + 1, projection="3d")
    for part_index, hull in hulls:
        if scene["parts"][part_index]["role"] == "support" and len(scene["parts"]) > 1:
            continue  # matplotlib does not clip 3D polygons: the support box would cover the frame
        ax.add_collection3d(Poly3DCollection(hull.vertices[hull.faces], alpha=0.6, linewidths=0.1, edgecolor="k",
                                             facecolor=_PART_COLOURS[part_index % len(_PART_COLOURS)]))
    # framed on the objects (the support box runs off the edges): they are what the reader wants to see
    framed = [h for i, h in hulls if scene["parts"][i]["role"] == "object"] or [h for _, h in hulls]
    lo = np.min([h.bounds[0] for h in framed], 0) - 0.03
    hi = np.max([h.bounds[1] for h in framed], 0) + 0.03
    centre, half = (lo + hi) / 2, (hi - lo)[:2].max() / 2
    ax.set_xlim(centre[0] - half, centre[0] + half), ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(lo[2], lo[2] + half)
    ax.set_box_aspect((1, 1, 0.5))
    ax.set_xlabel("x (m)", fontsize=7), ax.set_ylabel("y (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title("object hulls (robot base frame)", fontsize=8)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=_PART_COLOURS[i % len(_PART_COLOURS)], label=f"{p['name']}: {len(p['hulls'])} "
                              f"hull{'s' if len(p['hulls']) != 1 else ''}") for i, p in enumerate(scene["parts"])],
               loc="lower center", ncol=len(scene["parts"]), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
