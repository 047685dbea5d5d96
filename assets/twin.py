"""Group `twin`: the workcell's appearance and geometry, captured, reconstructed and meshed (then authored as USD)."""


import json

import dagster as dg

from assets.sim import WORKCELL_DIR, image_md, sim_workcell
from resources import ComputeDevice, DvcResource, ProjectPaths

CAPTURE_DIR = "data/capture"
SPLAT_DIR = "models/splat"
MESH_DIR = "models/mesh"
RUNS_DIR = "runs"


@dg.asset(
    group_name="twin",
    deps=[sim_workcell],
    kinds={"mujoco", "colmap", "opencv"},
    description="Posed images of the workcell in nerfstudio's transforms.json convention (robot base frame, metres): "
    "renders of the sim workcell by default, or a posed folder, or images/video posed by COLMAP and a ChArUco board "
    "(params.yaml `capture`).",
)
def scene_capture(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource) -> dg.MaterializeResult:
    from pipeline.capture import CaptureError, build_scene_capture

    recipe = paths.recipe()
    try:
        metrics = build_scene_capture(recipe, paths.artifact(CAPTURE_DIR),
                                      workcell_xml=paths.artifact(WORKCELL_DIR) / "workcell.xml",
                                      root=paths.root_path, log=context.log.info, progress=False)
    except CaptureError as exc:
        raise dg.Failure(description=str(exc)) from exc
    md5 = dvc.commit_stage("scene_capture")
    out = paths.artifact(CAPTURE_DIR)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(md5),
        metadata={
            "dvc_md5": md5,
            "recipe_hash": recipe.section_hash("capture"),
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            "views": dg.MetadataValue.md(image_md(out / "preview.png", width=880)),
            "cameras": dg.MetadataValue.md(image_md(out / "cameras.png", width=480)),
            "path": dg.MetadataValue.path(str(out / "transforms.json")),
        },
    )


@dg.asset(
    group_name="twin",
    deps=[scene_capture],
    kinds={"gsplat", "pytorch"},
    description="3D Gaussian splat of the capture (gsplat on CUDA, the same math in PyTorch on CPU; resumable), "
    "scored on held-out views; INRIA 3DGS PLY.",
)
def gaussian_splat(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource,
                   compute: ComputeDevice) -> dg.MaterializeResult:
    from pipeline.capture import CaptureError
    from pipeline.ply import PlyError
    from pipeline.splat.train import SplatError, build_gaussian_splat

    recipe = paths.recipe()
    try:
        metrics = build_gaussian_splat(recipe, paths.artifact(CAPTURE_DIR), paths.artifact(SPLAT_DIR),
                                       paths.artifact(RUNS_DIR), device=compute.device, root=paths.root_path,
                                       log=context.log.info, progress=False)
    except (SplatError, CaptureError, PlyError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    md5 = dvc.commit_stage("gaussian_splat")
    out = paths.artifact(SPLAT_DIR)
    metadata = {
        "dvc_md5": md5,
        "recipe_hash": recipe.section_hash("splat"),
        "holdout_psnr_db": dg.MetadataValue.float(metrics["holdout_psnr_db"]),
        "holdout_ssim": dg.MetadataValue.float(metrics["holdout_ssim"]),
        "train_psnr_db": dg.MetadataValue.float(metrics["train_psnr_db"]),
        "gaussians": metrics["gaussians"],
        "iterations": metrics["iterations"],
        "seconds": dg.MetadataValue.float(metrics["seconds"]),
        "train_seconds": dg.MetadataValue.float(metrics["train_seconds"]),
        "backend": metrics["backend"],
        "device": metrics["device"],
        "holdout_photo_vs_render": dg.MetadataValue.md(image_md(out / "holdout.png", width=900)),
        "path": dg.MetadataValue.path(str(out / "splat.ply")),
    }
    if metrics["initial_holdout_psnr_db"] is not None:
        metadata["initial_holdout_psnr_db"] = dg.MetadataValue.float(metrics["initial_holdout_psnr_db"])
        metadata["training"] = dg.MetadataValue.md(image_md(out / "training.png", width=880))
    return dg.MaterializeResult(data_version=dg.DataVersion(md5), metadata=metadata)


@dg.asset_check(asset=gaussian_splat, blocking=True, description="The splat reproduces views it never trained on: "
                "held-out PSNR ≥ splat.min_holdout_psnr_db.")
def splat_matches_holdout_views(paths: ProjectPaths) -> dg.AssetCheckResult:
    metrics = json.loads((paths.artifact(SPLAT_DIR) / "metrics.json").read_text())
    value, floor = metrics["holdout_psnr_db"], metrics["min_holdout_psnr_db"]
    worst = min(metrics["holdout_psnr_per_view"])
    return dg.AssetCheckResult(
        passed=value >= floor,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"holdout_psnr_db": value, "required_db": floor, "worst_view_psnr_db": worst,
                  "holdout_views": dg.MetadataValue.json(metrics["holdout_views"])},
        description=None if value >= floor else f"held-out PSNR {value:.2f} dB < {floor} dB: train longer (raise "
        "splat.iterations; training resumes), capture more views, or check the capture's poses",
    )


@dg.asset(
    group_name="twin",
    deps=[gaussian_splat, scene_capture, sim_workcell],
    kinds={"open3d", "coacd", "trimesh"},
    description="Simulation-ready collision geometry from the splat: depth rendered at the capture views, fused in an "
    "Open3D TSDF, robot cut out, support plane (RANSAC) + objects, CoACD convex hulls; scene.json lists the parts.",
)
def collision_mesh(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource,
                   compute: ComputeDevice) -> dg.MaterializeResult:
    from pipeline.capture import CaptureError
    from pipeline.mesh.build import build_collision_mesh
    from pipeline.mesh.fusion import MeshError

    recipe = paths.recipe()
    try:
        metrics = build_collision_mesh(recipe, paths.artifact(CAPTURE_DIR), paths.artifact(SPLAT_DIR),
                                       paths.artifact(WORKCELL_DIR) / "workcell.xml", paths.artifact(MESH_DIR),
                                       device=compute.device, log=context.log.info, progress=False)
    except (MeshError, CaptureError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    md5 = dvc.commit_stage("collision_mesh")
    out = paths.artifact(MESH_DIR)
    scene = json.loads((out / "scene.json").read_text())
    rows = ["| part | role | hulls | size (mm) | volume (cm³) | mass (g) |", "|---|---|---|---|---|---|"]
    for part in scene["parts"]:
        size = part.get("size_m") or [hi - lo for lo, hi in zip(part["bbox_min"], part["bbox_max"])]
        mass = "static" if part["mass_kg"] is None else f"{1000 * part['mass_kg']:.1f}"
        rows.append(f"| {part['name']} | {part['role']} | {len(part['hulls'])} | "
                    f"{' x '.join(f'{1000 * v:.0f}' for v in size)} | {1e6 * part['volume_m3']:.1f} | {mass} |")
    metadata = {
        "dvc_md5": md5,
        "recipe_hash": recipe.section_hash("mesh"),
        "objects_found": metrics["objects_found"],
        "hulls": metrics["hulls"],
        "support_height_mm": dg.MetadataValue.float(metrics["support_height_mm"]),
        "visual_triangles": metrics["visual_triangles"],
        "seconds": dg.MetadataValue.float(metrics["seconds"]),
        "parts": dg.MetadataValue.md("\n".join(rows)),
        "preview": dg.MetadataValue.md(image_md(out / "preview.png", width=900)),
        "path": dg.MetadataValue.path(str(out / "scene.json")),
    }
    if metrics["chamfer_mm"] is not None:
        metadata["chamfer_mm"] = dg.MetadataValue.float(metrics["chamfer_mm"])
    return dg.MaterializeResult(data_version=dg.DataVersion(md5), metadata=metadata)


def _mesh_metrics(paths: ProjectPaths) -> dict:
    return json.loads((paths.artifact(MESH_DIR) / "metrics.json").read_text())


@dg.asset_check(asset=collision_mesh, blocking=True, description="Every hull file, as trimesh reads it back, is "
                "watertight and convex with positive volume.")
def hulls_are_closed_and_convex(paths: ProjectPaths) -> dg.AssetCheckResult:
    from pipeline.mesh.build import check_hulls

    results = check_hulls(paths.artifact(MESH_DIR))
    bad = [r for r in results if not r["ok"]]
    return dg.AssetCheckResult(
        passed=bool(results) and not bad, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"hulls": len(results), "failing": dg.MetadataValue.json(bad)},
        description=None if results and not bad else ("no hull files" if not results else
                                                       f"{len(bad)} hull(s) not closed/convex/positive: "
                                                       + ", ".join(r["file"] for r in bad[:5])))


@dg.asset_check(asset=collision_mesh, blocking=True, description="Every part has a hull, no object needs more than "
                "mesh.max_hulls_per_object, the scene no more than mesh.max_hulls (too many: a noisy reconstruction).")
def hull_count_within_bounds(paths: ProjectPaths) -> dg.AssetCheckResult:
    from pipeline.mesh.build import hull_count_problems

    metrics = _mesh_metrics(paths)
    scene = json.loads((paths.artifact(MESH_DIR) / "scene.json").read_text())
    problems = hull_count_problems(scene, metrics["max_hulls_per_object"], metrics["max_hulls"])
    total = sum(len(p["hulls"]) for p in scene["parts"])
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"hulls": total, "per_part": dg.MetadataValue.json({p["name"]: len(p["hulls"]) for p in scene["parts"]})},
        description="; ".join(problems) or None)


@dg.asset_check(asset=collision_mesh, blocking=True, description="The reconstruction lies within mesh.max_chamfer_mm "
                "(symmetric Chamfer distance) of the workcell surfaces the cameras saw, where the capture has "
                "ground-truth depth (the sim source).")
def mesh_matches_ground_truth(paths: ProjectPaths) -> dg.AssetCheckResult:
    metrics = _mesh_metrics(paths)
    value, limit = metrics["chamfer_mm"], metrics["max_chamfer_mm"]
    if value is None:
        return dg.AssetCheckResult(passed=True, metadata={"measured": False}, description="not measured: the "
                                   "capture has no ground-truth depth (only the sim source renders it)")
    return dg.AssetCheckResult(
        passed=value <= limit, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"measured": True, "chamfer_mm": value, "limit_mm": limit,
                  "reconstruction_to_truth_mm": metrics["reconstruction_to_truth_mm"],
                  "truth_to_reconstruction_mm": metrics["truth_to_reconstruction_mm"]},
        description=None if value <= limit else f"Chamfer {value:.2f} mm > {limit} mm: a better splat (more "
        "iterations, views or resolution) or a smaller mesh.voxel_m")


@dg.asset_check(asset=collision_mesh, blocking=True, description="The number of objects found on the support equals "
                "mesh.expected_objects (when set).")
def objects_found_as_expected(paths: ProjectPaths) -> dg.AssetCheckResult:
    metrics = _mesh_metrics(paths)
    found, expected = metrics["objects_found"], metrics["objects_expected"]
    meta = {"found": found, "names": dg.MetadataValue.json(metrics["object_names"])}
    if expected is None:
        return dg.AssetCheckResult(passed=True, metadata=meta, description="not checked: mesh.expected_objects unset")
    return dg.AssetCheckResult(
        passed=found == expected, severity=dg.AssetCheckSeverity.ERROR, metadata={**meta, "expected": expected},
        description=None if found == expected else f"found {found} object(s) on the support, expected {expected}: "
        "see preview.png; tune mesh.object_min_height_m / cluster_eps_m / min_object_area_m2")


ASSETS = [scene_capture, gaussian_splat, collision_mesh]
CHECKS = [splat_matches_holdout_views, hulls_are_closed_and_convex, hull_count_within_bounds,
          mesh_matches_ground_truth, objects_found_as_expected]
