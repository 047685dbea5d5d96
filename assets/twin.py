"""Group `twin`: the workcell's appearance and geometry, captured and reconstructed (then meshed and authored as USD)."""


import json

import dagster as dg

from assets.sim import WORKCELL_DIR, image_md, sim_workcell
from resources import ComputeDevice, DvcResource, ProjectPaths

CAPTURE_DIR = "data/capture"
SPLAT_DIR = "models/splat"
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


ASSETS = [scene_capture, gaussian_splat]
CHECKS = [splat_matches_holdout_views]
