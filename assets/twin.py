"""Group `twin`: the workcell's appearance and geometry, captured, reconstructed, meshed and authored as OpenUSD."""


import json

import dagster as dg

from assets.demos import DEMOS_DIR, demos
from assets.sim import WORKCELL_DIR, sim_workcell
from pipeline.common.layout import RUNS_DIR, STAGE_DIRS
from assets.materialize import committed, image_md, stage_errors
from resources import ComputeDevice, DvcResource, GPU_POOL, ProjectPaths, gpu_op_tags

CAPTURE_DIR = STAGE_DIRS["scene_capture"]
SPLAT_DIR = STAGE_DIRS["gaussian_splat"]
MESH_DIR = STAGE_DIRS["collision_mesh"]
TWIN_DIR = STAGE_DIRS["usd_twin"]


@dg.asset(
    group_name="twin",
    deps=[sim_workcell],
    kinds={"mujoco", "colmap", "opencv"},
    description="Posed images of the workcell in nerfstudio's transforms.json convention (robot base frame, metres): "
    "renders of the sim workcell by default, or a posed folder, or images/video posed by COLMAP and a ChArUco board "
    "(params.yaml `capture`).",
)
def scene_capture(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource) -> dg.MaterializeResult:
    from pipeline.capture.stage import CaptureError, build_scene_capture

    recipe = paths.recipe()
    with stage_errors(CaptureError):
        metrics = build_scene_capture(recipe, paths.artifact(CAPTURE_DIR),
                                      workcell_xml=paths.artifact(WORKCELL_DIR) / "workcell.xml",
                                      root=paths.root_path, log=context.log.info, progress=False)
    out = paths.artifact(CAPTURE_DIR)
    return committed("scene_capture", dvc, recipe, "capture", metrics=metrics, metadata={
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        "views": dg.MetadataValue.md(image_md(out / "preview.png", width=880)),
        "cameras": dg.MetadataValue.md(image_md(out / "cameras.png", width=480)),
        "path": dg.MetadataValue.path(str(out / "transforms.json")),
    })


@dg.asset(
    group_name="twin",
    deps=[scene_capture],
    kinds={"gsplat", "pytorch"},
    op_tags=gpu_op_tags("gaussian_splat"),  # a cluster pod with the recipe's GPUs (resources/k8s.py)
    pool=GPU_POOL,  # GPU stages queue for the GPUs (pool limit; local: one at a time)
    description="3D Gaussian splat of the capture (gsplat on CUDA, the same math in PyTorch on CPU; resumable), "
    "scored on held-out views; INRIA 3DGS PLY.",
)
def gaussian_splat(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource,
                   compute: ComputeDevice) -> dg.MaterializeResult:
    from pipeline.capture.stage import CaptureError
    from pipeline.common.ply import PlyError
    from pipeline.splat.stage import SplatError, build_gaussian_splat

    recipe = paths.recipe()
    with stage_errors(SplatError, CaptureError, PlyError):
        metrics = build_gaussian_splat(recipe, paths.artifact(CAPTURE_DIR), paths.artifact(SPLAT_DIR),
                                       paths.artifact(RUNS_DIR), device=compute.device, root=paths.root_path,
                                       log=context.log.info, progress=False)
    out = paths.artifact(SPLAT_DIR)
    metadata = {
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
    return committed("gaussian_splat", dvc, recipe, "splat", metadata, metrics)


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
    from pipeline.capture.stage import CaptureError
    from pipeline.mesh.stage import build_collision_mesh
    from pipeline.mesh.fusion import MeshError

    recipe = paths.recipe()
    with stage_errors(MeshError, CaptureError):
        metrics = build_collision_mesh(recipe, paths.artifact(CAPTURE_DIR), paths.artifact(SPLAT_DIR),
                                       paths.artifact(WORKCELL_DIR) / "workcell.xml", paths.artifact(MESH_DIR),
                                       device=compute.device, log=context.log.info, progress=False)
    out = paths.artifact(MESH_DIR)
    scene = json.loads((out / "scene.json").read_text())
    rows = ["| part | role | hulls | size (mm) | volume (cm³) | mass (g) |", "|---|---|---|---|---|---|"]
    for part in scene["parts"]:
        size = part.get("size_m") or [hi - lo for lo, hi in zip(part["bbox_min"], part["bbox_max"])]
        mass = "static" if part["mass_kg"] is None else f"{1000 * part['mass_kg']:.1f}"
        rows.append(f"| {part['name']} | {part['role']} | {len(part['hulls'])} | "
                    f"{' x '.join(f'{1000 * v:.0f}' for v in size)} | {1e6 * part['volume_m3']:.1f} | {mass} |")
    metadata = {
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
    return committed("collision_mesh", dvc, recipe, "mesh", metadata, metrics)


def _mesh_metrics(paths: ProjectPaths) -> dict:
    return json.loads((paths.artifact(MESH_DIR) / "metrics.json").read_text())


@dg.asset_check(asset=collision_mesh, blocking=True, description="Every hull file, as trimesh reads it back, is "
                "watertight and convex with positive volume.")
def hulls_are_closed_and_convex(paths: ProjectPaths) -> dg.AssetCheckResult:
    from pipeline.mesh.stage import check_hulls

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
    from pipeline.mesh.stage import hull_count_problems

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


@dg.asset_check(asset=collision_mesh, blocking=True, description="Each object against the capture's ground truth "
                "(the sim source has it): size error per axis, centre error, yaw error, volume and mass ratios "
                "within mesh.object_gates. A cube reconstructed a third too small fails here, whatever the "
                "scene-wide Chamfer distance says (a warning instead with mesh.object_gate_blocks false).")
def objects_match_ground_truth(paths: ProjectPaths) -> dg.AssetCheckResult:
    from pipeline.mesh.object_gate import summary_line

    metrics = _mesh_metrics(paths)
    if not metrics.get("object_gate_measured"):
        return dg.AssetCheckResult(passed=True, metadata={"measured": False}, description="not measured: the "
                                   "capture has no ground-truth objects (only the sim source knows them)")
    objects, problems = metrics["object_geometry"], metrics["object_gate_problems"]
    lines = [summary_line(name, e) for name, e in objects.items()]
    blocks = paths.recipe().mesh.object_gate_blocks  # a WARN failure does not stop the blocking check's downstream
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR if blocks else dg.AssetCheckSeverity.WARN,
        metadata={"measured": True, "objects": dg.MetadataValue.json(objects),
                  "summary": dg.MetadataValue.md("\n".join(f"- {line}" for line in lines))},
        description=None if not problems else "; ".join(problems) + " — a better splat (resolution, views, "
        "iterations) or a finer mesh.solid_cell_m; docs/mesh.md")


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


@dg.asset(
    group_name="twin",
    deps=[collision_mesh, gaussian_splat, scene_capture, sim_workcell, demos],
    kinds={"openusd", "newton", "mujoco"},
    description="The twin as one OpenUSD stage: the official SO-101 (servo gains, home pose), convex colliders and "
    "rigid objects from the mesh, the splat as ParticleField3DGaussianSplat prims, the front/wrist/capture cameras; "
    "validated (UsdValidation), loaded and settled in Newton, and scored by replaying recorded actions open loop.",
)
def usd_twin(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource) -> dg.MaterializeResult:
    from pipeline.capture.stage import CaptureError
    from pipeline.twin.author import TwinError
    from pipeline.twin.stage import build_usd_twin

    recipe = paths.recipe()
    with stage_errors(TwinError, CaptureError):
        # Newton's MuJoCo-C path: the settle test and the replay are single-world and run on CPU
        metrics = build_usd_twin(recipe, paths.artifact(MESH_DIR), paths.artifact(SPLAT_DIR),
                                 paths.artifact(CAPTURE_DIR), paths.artifact(WORKCELL_DIR), paths.artifact(DEMOS_DIR),
                                 paths.artifact(TWIN_DIR), root=paths.root_path, device="cpu", log=context.log.info,
                                 progress=False, runs_dir=paths.artifact(RUNS_DIR))
    for warning in metrics["replay_warnings"]:
        context.log.warning(f"sim-real gap: {warning}")
    out = paths.artifact(TWIN_DIR)
    metadata = {
        "gaussians": dg.MetadataValue.json(metrics["gaussians"]),
        "colliders": metrics["stage"]["colliders"],
        "rigid_objects": dg.MetadataValue.json(metrics["dynamic_objects"]),
        "twin_view_psnr_db": dg.MetadataValue.float(metrics["views"]["psnr_db"]),
        "settle_penetration_mm": dg.MetadataValue.float(metrics["settle"]["penetration_end_mm"]),
        "seconds": dg.MetadataValue.float(metrics["seconds"]),
        "replay_gap": dg.MetadataValue.md(_replay_table(metrics["replay"])),
        "views": dg.MetadataValue.md(image_md(out / "preview.png", width=900)),
        "upstream_md5": dg.MetadataValue.json(metrics["stage"]["upstream_md5"]),
        "path": dg.MetadataValue.path(str(out / "twin.usd")),
    }
    for name, r in metrics["replay"].items():
        if r.get("measured"):
            metadata[f"replay_{name}_rmse_deg"] = dg.MetadataValue.float(r["mean_rmse_deg"])
    if (out / "replay.png").is_file():
        metadata["replay"] = dg.MetadataValue.md(image_md(out / "replay.png", width=900))
    metadata["servo_identification"] = dg.MetadataValue.md(_identify_table(metrics.get("identify", {})))
    for name, r in metrics.get("identify", {}).items():
        if r.get("identified"):
            metadata[f"identified_{name}_heldout_rmse_deg"] = dg.MetadataValue.float(
                r["heldout"]["identified"]["mean_rmse_deg"])
    if (out / "identify.png").is_file():
        metadata["servo_fit"] = dg.MetadataValue.md(image_md(out / "identify.png", width=900))
    return committed("usd_twin", dvc, recipe, "twin", metadata, metrics)


def _replay_table(replay: dict) -> str:
    from pipeline.workcell.joints import SIM_JOINTS

    rows = ["| recording | episodes | frames | " + " | ".join(SIM_JOINTS) + " | mean |",
            "|---|---|---|" + "---|" * (len(SIM_JOINTS) + 1)]
    for name, r in replay.items():
        if not r.get("measured"):
            rows.append(f"| {name} | not measured: {r['why']} |")
            continue
        rows.append(f"| {name} | {r['episodes']} | {r['frames']} | "
                    + " | ".join(f"{r['rmse_deg'][j]:.2f}" for j in SIM_JOINTS) + f" | {r['mean_rmse_deg']:.2f} |")
    return "Open-loop tracking RMSE, degrees (twin vs recorded joints)\n\n" + "\n".join(rows)


def _identify_table(identify: dict) -> str:
    """Held-out open-loop RMSE per joint, prior vs identified, and the identified gains, per recording."""
    from pipeline.workcell.joints import SIM_JOINTS

    rows = ["| recording | servo model | " + " | ".join(SIM_JOINTS) + " | mean |",
            "|---|---|" + "---|" * (len(SIM_JOINTS) + 1)]
    for name, r in identify.items():
        if not r.get("identified"):
            rows.append(f"| {name} | not identified: {r.get('why', '')} |")
            continue
        for model in ("prior", "identified"):
            e = r["heldout"][model]
            rows.append(f"| {name} (held out {r['heldout_episodes']}) | {model} | "
                        + " | ".join(f"{e['rmse_deg'][j]:.2f}" for j in SIM_JOINTS) + f" | {e['mean_rmse_deg']:.2f} |")
        p = r["profile"]
        rows.append(f"| {name} | kp / kv (latency {p['latency_steps']} frames) | "
                    + " | ".join(f"{p['kp'][j]:.1f} / {p['kv'][j]:.2f}" for j in SIM_JOINTS) + " | |")
    return "Servo identification: held-out open-loop tracking RMSE, degrees\n\n" + "\n".join(rows)


def _twin_metrics(paths: ProjectPaths) -> dict:
    return json.loads((paths.artifact(TWIN_DIR) / "metrics.json").read_text())


@dg.asset_check(asset=usd_twin, blocking=True, description="The stage, reopened with pxr, passes every OpenUSD "
                "validator (UsdValidation, usdchecker's engine in usd-core 26) and holds an articulation root, the "
                "colliders, Gaussians in a ParticleField3DGaussianSplat prim, Z up and metres.")
def twin_stage_is_valid(paths: ProjectPaths) -> dg.AssetCheckResult:
    from pipeline.twin.stage import stage_problems, stage_summary, validation_errors

    usd = paths.artifact(TWIN_DIR) / "twin.usd"
    errors = validation_errors(usd)
    s = stage_summary(usd)
    problems = stage_problems(s, errors)
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"validation_errors": len(errors), "articulation_roots": dg.MetadataValue.json(s["articulation_roots"]),
                  "colliders": s["colliders"], "splat_prims": dg.MetadataValue.json(s["splat_prims"]),
                  "cameras": s["cameras"]},
        description="; ".join(problems) or None)


@dg.asset_check(asset=usd_twin, blocking=True, description="newton.ModelBuilder.add_usd loads the stage with the "
                "SO-101's six joints and seven links and one free body per rigid object.")
def twin_loads_in_newton(paths: ProjectPaths) -> dg.AssetCheckResult:
    from pipeline.twin.physics import TwinLoadError, load_twin

    expected = sorted(paths.recipe().twin.dynamic_objects)
    try:
        twin = load_twin(paths.artifact(TWIN_DIR) / "twin.usd")
    except TwinLoadError as exc:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(exc))
    found = sorted(twin.object_bodies)
    return dg.AssetCheckResult(
        passed=found == expected, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"bodies": dg.MetadataValue.json(twin.bodies), "joints": dg.MetadataValue.json(twin.joints),
                  "physics_dt": twin.physics_dt},
        description=None if found == expected else f"rigid objects {found}, expected {expected}")


@dg.asset_check(asset=usd_twin, blocking=True, description="twin.settle_seconds of Newton simulation of the file: "
                "objects stay at rest on the table, hulls overlap at most twin.max_penetration_mm, the robot holds "
                "its home pose.")
def twin_settles_at_rest(paths: ProjectPaths) -> dg.AssetCheckResult:
    from pipeline.twin.physics import settle, settle_problems

    cfg = paths.recipe().twin
    result = settle(paths.artifact(TWIN_DIR) / "twin.usd", cfg.settle_seconds)
    problems = settle_problems(result, cfg)
    return dg.AssetCheckResult(
        passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"penetration_end_mm": result["penetration_end_mm"],
                  "max_home_error_deg": result["max_home_error_deg"],
                  "objects": dg.MetadataValue.json(result["objects"])},
        description="; ".join(problems) or None)


@dg.asset_check(asset=usd_twin, blocking=True, description="The twin's splat, rendered through its capture cameras, "
                "reproduces held-out capture photos: PSNR >= splat.min_holdout_psnr_db.")
def twin_views_match_capture(paths: ProjectPaths) -> dg.AssetCheckResult:
    views = _twin_metrics(paths)["views"]
    ok = views["psnr_db"] >= views["min_psnr_db_required"]
    return dg.AssetCheckResult(
        passed=ok, severity=dg.AssetCheckSeverity.ERROR,
        metadata={"psnr_db": views["psnr_db"], "min_psnr_db": views["min_psnr_db"],
                  "splat_psnr_same_views_db": views["splat_psnr_same_views_db"] or 0.0,
                  "required_db": views["min_psnr_db_required"]},
        description=None if ok else f"{views['psnr_db']:.2f} dB < {views['min_psnr_db_required']} dB")


@dg.asset_check(asset=usd_twin, blocking=False, description="The sim-real dynamics gap: recorded actions replayed open "
                "loop track the recorded joints within twin.max_replay_rmse_deg (a warning, not a gate).")
def twin_replay_gap(paths: ProjectPaths) -> dg.AssetCheckResult:
    metrics = _twin_metrics(paths)
    warnings = metrics["replay_warnings"]
    return dg.AssetCheckResult(
        passed=not warnings, severity=dg.AssetCheckSeverity.WARN,
        metadata={name: dg.MetadataValue.json(r) for name, r in metrics["replay"].items()},
        description="; ".join(warnings) or None)


ASSETS = [scene_capture, gaussian_splat, collision_mesh, usd_twin]
CHECKS = [splat_matches_holdout_views, hulls_are_closed_and_convex, hull_count_within_bounds,
          mesh_matches_ground_truth, objects_match_ground_truth, objects_found_as_expected, twin_stage_is_valid, twin_loads_in_newton,
          twin_settles_at_rest, twin_views_match_capture, twin_replay_gap]
