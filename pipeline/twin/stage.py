"""Stage `usd_twin`: robot, colliders, splat and cameras in one OpenUSD stage, checked by physics.

Framework-free. Reads the collision mesh (models/mesh), the splat (models/splat), the capture (data/capture), the
workcell (models/workcell: the robot's pose during the capture, to tell the robot's Gaussians apart) and the demos;
authors `twin.usd` (see `pipeline.twin.author`), then checks it:

  validation   every OpenUSD validator (UsdValidation: what `usdchecker` runs in usd-core 26) — no errors
  newton       `newton.ModelBuilder.add_usd` loads the SO-101's 6 joints and 7 links and every rigid object
  settle       N s of simulation: objects at rest on the table, overlap <= max, the robot holds its home pose
  identify     the servos (gains, friction, armature, latency, gripper force, calibration) fitted to the demos'
               open-loop replay error, held-out episodes before/after; the drives then carry the fit. The real
               recording gets its own profile the same way (pipeline/twin/identify.py)
  views        the twin's splat rendered through its capture cameras vs the capture photos (PSNR)
  replay       the demos' and a real recording's actions replayed open loop: per-joint tracking error (degrees)

Information barrier: of the stand-in robot (`workcell`) the twin reads only what a real cell gives — the capture,
the demos, the official robot USD, the robot's mounting and cameras, the joint state at capture. Servo parameters
come from identification (or `twin.servo_prior`), object mass from the mesh's density prior.

Writes to `out_dir`:
  twin.usd, robot/so101.usd   the stage and the (repaired) official robot USD it references
  metrics.json                everything above and the gate inputs (timings are reported, not written)
  preview.png, replay.png     capture photos vs twin renders; recorded vs replayed joints
  servo_profile.json          the servo model the drives carry (identified from the demos, or the prior)
  servo_real.json             the real recording's own identified profile (when twin.real_recording is set)
  identify.png                held-out episodes: recorded joints vs the prior's and the identified replay
  config.json                 the recipe section and the md5 of every input

User guide: docs/twin.md.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.common.artifacts import file_md5, portable, replace_dir, staging_dir, write_config, write_metrics
from pipeline.common.layout import CONFIG_FILE
from pipeline.capture.stage import Capture
from pipeline.common.recipe import Recipe
from pipeline.twin.author import TwinError, activated, author_twin, split_splat


def workcell_given(recipe: Recipe) -> dict:
    """What the twin takes from the `workcell` section: what a real cell's owner knows too — the recording's fps,
    the robot's mounting, the cameras' calibration, how the official USD's colliders are decomposed. Never the
    servos, the cube's mass or friction, the table's friction: those are the stand-in robot's hidden physics."""
    cell = recipe.workcell
    return {"fps": cell.fps, "robot_base_yaw_deg": cell.robot_base_yaw_deg,
            "cameras": cell.cameras.model_dump(mode="json"),
            "colliders": {"decompose_parts": list(cell.decompose_parts), "decompose_max_faces": cell.decompose_max_faces,
                          "coacd_threshold": cell.coacd_threshold, "seed": cell.seed}}


def _folder_md5(files: list[Path]) -> str:
    h = hashlib.md5()
    for f in sorted(files):
        h.update(f.name.encode() + file_md5(f).encode())
    return h.hexdigest()


def _bar(desc: str, enabled: bool):
    from tqdm import tqdm

    return lambda total: tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def build_usd_twin(recipe: Recipe, mesh_dir: Path, splat_dir: Path, capture_dir: Path, workcell_dir: Path,
                   demos_dir: Path | None, out_dir: Path, root: Path = Path("."), device: str = "cpu",
                   log: Callable[[str], None] = print, progress: bool = True, runs_dir: Path | None = None) -> dict:
    """Author and check the twin; returns the metrics (also in `out_dir/metrics.json`). `runs_dir` keeps the
    identification's finished fits, so an interrupted build resumes instead of refitting."""
    from pipeline.mesh.fusion import robot_surface_points
    from pipeline.workcell.build import official_robot_usd
    from pipeline.splat.gaussians import load_ply

    cfg = recipe.twin
    t0 = time.perf_counter()
    scene_path = Path(mesh_dir) / "scene.json"
    splat_path = Path(splat_dir) / "splat.ply"
    for path, asset in ((scene_path, "collision_mesh"), (splat_path, "gaussian_splat")):
        if not path.is_file():
            raise TwinError(f"no {path}: materialize `{asset}` first")
    scene = json.loads(scene_path.read_text())
    capture = Capture.load(capture_dir)
    gaussians = activated(load_ply(splat_path))
    robot_usd = official_robot_usd()
    hull_files = sorted((Path(mesh_dir) / "hulls").glob("*.obj"))
    upstream = {
        "models/mesh/scene.json": file_md5(scene_path),
        "models/mesh/hulls": _folder_md5(hull_files),
        "models/splat/splat.ply": file_md5(splat_path),
        "data/capture/transforms.json": file_md5(Path(capture_dir) / "transforms.json"),
        "robot_usd": file_md5(robot_usd),
    }
    mesh_config = json.loads((Path(mesh_dir) / CONFIG_FILE).read_text()) \
        if (Path(mesh_dir) / CONFIG_FILE).is_file() else {}
    capture_joints = mesh_config.get("robot_joint_positions_rad")
    robot_points = None
    if capture_joints is not None and (Path(workcell_dir) / "workcell.xml").is_file():
        robot_points = robot_surface_points(Path(workcell_dir) / "workcell.xml", capture_joints)
    else:
        log("the capture's robot pose is unknown: no Gaussians are set aside as the robot's")
    dynamic = [p for p in scene["parts"] if p["name"] in cfg.dynamic_objects]
    parts = split_splat(gaussians, scene, dynamic, robot_points, cfg.object_splat_margin_m,
                        cfg.robot_splat_clearance_m)

    staging = staging_dir(Path(out_dir))
    staging.mkdir(parents=True)
    log("authoring twin.usd")
    usd_path = author_twin(recipe, staging, scene, Path(mesh_dir), parts, capture, robot_usd, upstream, progress=log)
    t_author = time.perf_counter() - t0

    metrics: dict = {
        "gaussians": {"scene": len(parts.scene["means"]), "robot_at_capture": len(parts.robot["means"]),
                      **{f"object:{k}": len(v["means"]) for k, v in parts.objects.items()}},
        "dynamic_objects": [p["name"] for p in dynamic],
        "static_parts": [p["name"] for p in scene["parts"] if p["name"] not in cfg.dynamic_objects],
        "author_seconds": round(t_author, 1),
    }
    metrics["stage"] = stage_summary(usd_path)
    metrics["validation_errors"] = validation_errors(usd_path)
    log(f"UsdValidation: {len(metrics['validation_errors'])} errors")

    from pipeline.twin.physics import load_twin, settle, settle_problems

    t = time.perf_counter()
    twin = load_twin(usd_path, device)
    sources = {"demos": Path(demos_dir) if demos_dir else None,
               "real": (Path(root) / cfg.real_recording) if cfg.real_recording else None}
    # as the recipe names them (a recording outside the project stays relative to it, not to this machine's root)
    labels = {"demos": portable(demos_dir, root) if demos_dir else None, "real": cfg.real_recording}
    metrics["identify"], profiles, curves = identify_servos(twin, cfg, sources, labels, staging, log, progress,
                                                            Path(runs_dir) / "usd_twin" if runs_dir else None)
    if "demos" in profiles:  # the drives carry the servos identified from the demos
        from pxr import Usd

        from pipeline.twin.author import write_servo

        stage = Usd.Stage.Open(str(usd_path))
        write_servo(stage, profiles["demos"], "identified", metrics["identify"]["demos"]["fit"])
        stage.GetRootLayer().Save()
        twin = load_twin(usd_path, device)
    if curves:
        identify_figure(curves, staging / "identify.png")
    metrics["newton"] = {"bodies": len(twin.bodies), "joints": len(twin.joints), "robot_joints": 6,
                         "rigid_objects": sorted(twin.object_bodies), "physics_dt": twin.physics_dt,
                         "load_seconds": round(time.perf_counter() - t, 2)}
    log(f"settling for {cfg.settle_seconds} s in Newton")
    t = time.perf_counter()
    metrics["settle"] = settle(usd_path, cfg.settle_seconds, device, progress=_bar("settle", progress),
                                twin=twin)
    metrics["settle"]["seconds_wall"] = round(time.perf_counter() - t, 1)
    metrics["settle_problems"] = settle_problems(metrics["settle"], cfg)

    log("rendering the twin through its capture cameras")
    metrics["views"] = score_views(usd_path, capture, recipe, Path(splat_dir), staging / "preview.png")

    metrics["replay"] = {}
    runs = {}
    from pipeline.twin.replay import replay_dataset, replay_figure, summarize

    for name, source in sources.items():
        if source is None or not (source / "meta" / "info.json").is_file():
            metrics["replay"][name] = {"measured": False,
                                       "why": f"no LeRobot dataset at {labels[name]}" if source else "not configured"}
            continue
        log(f"replaying the {name} ({source}) open loop in the twin")
        t = time.perf_counter()
        runs[name] = replay_dataset(twin, source, cfg.replay_episodes if name == "demos" else 0,
                                    progress=_bar(f"replay {name}", progress))
        metrics["replay"][name] = {"measured": True, "dataset": labels[name], **summarize(runs[name]),
                                   "seconds": round(time.perf_counter() - t, 1)}
    if runs:
        replay_figure(runs, staging / "replay.png")
    metrics["replay_warnings"] = [
        f"{name}: mean tracking RMSE {r['mean_rmse_deg']:.2f} deg > {cfg.max_replay_rmse_deg}"
        for name, r in metrics["replay"].items() if r.get("measured") and r["mean_rmse_deg"] > cfg.max_replay_rmse_deg]
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    write_config(staging, {"twin": cfg.model_dump(mode="json"), "workcell_given": workcell_given(recipe),
                           "upstream_md5": upstream})
    write_metrics(staging, metrics)
    replace_dir(staging, Path(out_dir))
    return metrics


def identify_servos(twin, cfg, sources: dict, labels: dict, out: Path, log, progress: bool,
                    cache_root: Path | None) -> tuple[dict, dict, dict]:
    """Identify a servo profile per recording (the demos: the twin's; the real recording: that arm's, written to
    servo_real.json). Returns (metrics per recording, identified profiles, held-out curves for the figure)."""
    from pipeline.demos.checks import DemoData
    from pipeline.twin.identify import (IdentifyError, ReplayModel, ServoProfile, error_summary, identify,
                                        load_episodes, split_episodes, tracking_error)

    id_cfg = cfg.identify
    prior = ServoProfile.from_prior(cfg.servo_prior)
    report, profiles, curves = {}, {}, {}
    model = None
    for name, source in sources.items():
        if not id_cfg.enabled:
            report[name] = {"identified": False, "why": "twin.identify.enabled is false"}
            continue
        if source is None or not (source / "meta" / "info.json").is_file():
            report[name] = {"identified": False,
                            "why": f"no LeRobot dataset at {labels[name]}" if source else "not configured"}
            continue
        model = model or ReplayModel(twin)
        fps = float(DemoData.load(source).meta.fps)
        episodes = load_episodes(source)
        heldout_n = id_cfg.heldout_episodes if name == "demos" else id_cfg.real_heldout_episodes
        try:
            train, heldout = split_episodes(episodes, heldout_n, id_cfg.train_episodes, id_cfg.seed)
            log(f"identifying the servos from the {name}: {len(train)} episode(s) fitted, "
                f"{len(heldout)} held out")
            t = time.perf_counter()
            result = identify(model, train, prior, id_cfg, fps, log=log, progress=progress,
                              cache_dir=cache_root / name if cache_root else None)
        except IdentifyError as exc:
            if name == "demos":
                raise  # the twin's own servos: a recording that cannot identify them is the user's to fix
            report[name] = {"identified": False, "why": str(exc)}
            log(f"the {name} cannot identify servos: {exc}")
            continue
        before = tracking_error(model, heldout, prior, fps)
        after = tracking_error(model, heldout, result.profile, fps)
        report[name] = {
            "identified": True, "dataset": labels[name],
            "train_episodes": [e.index for e in train], "heldout_episodes": [e.index for e in heldout],
            "heldout": {"prior": error_summary(before), "identified": error_summary(after)},
            "train_rmse_deg": round(result.train_rmse_deg, 4),
            "fit": {"cost_by_latency": {str(k): round(v, 2) for k, v in result.cost_by_latency.items()},
                    "spread": result.spread, "replays": result.evaluations,
                    "episode_refits": len(result.episode_profiles),
                    "calibration_at_prior": result.calibration_at_prior},
            "profile": result.profile.to_json(), "prior": prior.to_json(),
            "seconds": round(time.perf_counter() - t, 1),
        }
        log(f"  held-out mean RMSE {report[name]['heldout']['prior']['mean_rmse_deg']:.2f} deg (prior) -> "
            f"{report[name]['heldout']['identified']['mean_rmse_deg']:.2f} deg (identified)")
        profiles[name] = result.profile
        (out / ("servo_profile.json" if name == "demos" else f"servo_{name}.json")).write_text(json.dumps(
            {"dataset": labels[name], "profile": result.profile.to_json(), "fit": report[name]["fit"],
             "heldout": report[name]["heldout"]}, indent=2))
        ep = heldout[0]
        curves[name] = {"episode": ep.index, "recorded": np.degrees(ep.states[1:]),
                        "prior": np.degrees(model.replay(ep, prior, fps)),
                        "identified": np.degrees(model.replay(ep, result.profile, fps))}
    if "demos" not in profiles:
        (out / "servo_profile.json").write_text(json.dumps({"dataset": None, "profile": prior.to_json(),
                                                            "why": report.get("demos", {}).get("why")}, indent=2))
    return report, profiles, curves


def identify_figure(curves: dict, path: Path) -> None:
    """One row per recording: each joint on a held-out episode — recorded, the prior's replay, the identified."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.workcell.joints import SIM_JOINTS

    fig, axes = plt.subplots(len(curves), 6, figsize=(18, 2.8 * len(curves)), squeeze=False)
    for r, (name, c) in enumerate(curves.items()):
        t = np.arange(1, len(c["recorded"]) + 1)
        for j, joint in enumerate(SIM_JOINTS):
            ax = axes[r, j]
            ax.plot(t, c["recorded"][:, j], color="tab:blue", lw=1.4, label="recorded")
            ax.plot(t, c["prior"][:, j], color="0.6", lw=1.0, ls=":", label="prior")
            ax.plot(t, c["identified"][:, j], color="tab:red", lw=1.1, ls="--", label="identified")
            rm = [np.sqrt(np.mean((c[k][:, j] - c["recorded"][:, j]) ** 2)) for k in ("prior", "identified")]
            ax.set_title(f"{name} ep {c['episode']} (held out): {joint}\nRMSE {rm[0]:.2f} -> {rm[1]:.2f} deg",
                         fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("deg")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def stage_summary(usd_path: Path) -> dict:
    """What the stage holds, read back with pxr: articulation roots, colliders, rigid bodies, splat prims, cameras."""
    from pxr import Usd, UsdGeom, UsdPhysics, UsdVol

    stage = Usd.Stage.Open(str(usd_path))
    prims = list(Usd.PrimRange.Stage(stage, Usd.TraverseInstanceProxies()))
    splats = [p for p in prims if p.IsA(UsdVol.ParticleField3DGaussianSplat)]
    layer = stage.GetRootLayer()
    return {
        "up_axis": str(UsdGeom.GetStageUpAxis(stage)),
        "meters_per_unit": UsdGeom.GetStageMetersPerUnit(stage),
        "default_prim": str(stage.GetDefaultPrim().GetPath()) if stage.GetDefaultPrim() else "",
        "articulation_roots": [str(p.GetPath()) for p in prims if p.HasAPI(UsdPhysics.ArticulationRootAPI)],
        "colliders": sum(p.HasAPI(UsdPhysics.CollisionAPI) for p in prims if not str(p.GetPath()).startswith(
            "/World/Robot")),
        "robot_colliders": sum(p.HasAPI(UsdPhysics.CollisionAPI) for p in prims
                               if str(p.GetPath()).startswith("/World/Robot")),
        "rigid_bodies": [str(p.GetPath()) for p in prims if p.HasAPI(UsdPhysics.RigidBodyAPI)
                         and not str(p.GetPath()).startswith("/World/Robot")],
        "splat_prims": {str(p.GetPath()): len(UsdVol.ParticleField3DGaussianSplat(p).GetPositionsAttr().Get() or [])
                        for p in splats},
        "cameras": sum(p.IsA(UsdGeom.Camera) for p in prims),
        "physics_scenes": [str(p.GetPath()) for p in prims if p.IsA(UsdPhysics.Scene)],
        "upstream_md5": dict(layer.customLayerData.get("twinloop", {}).get("upstream_md5", {})),
    }


def validation_errors(usd_path: Path) -> list[str]:
    """Every error of every registered OpenUSD validator on the composed stage (usd-core 26 replaced the Python
    `UsdUtils.ComplianceChecker` by the UsdValidation framework, which also carries the physics validators)."""
    from pxr import Usd, UsdValidation

    validators = UsdValidation.ValidationRegistry().GetOrLoadAllValidators()
    errors = UsdValidation.ValidationContext(validators).Validate(Usd.Stage.Open(str(usd_path)))
    out = []
    for e in errors:
        if e.GetType() != UsdValidation.ValidationErrorType.Error:
            continue
        name = e.GetValidator().GetMetadata().name if e.GetValidator() else "?"
        sites = [str(s.GetPrim().GetPath()) for s in e.GetSites() if s.IsPrim()]
        out.append(f"{name}: {e.GetMessage()}" + (f" ({sites[0]})" if sites else ""))
    return out


def score_views(usd_path: Path, capture: Capture, recipe: Recipe, splat_dir: Path, preview_path: Path) -> dict:
    """PSNR of the twin's splat prims (read back from the USD; the capture-time robot Gaussians included, as the
    photos show the robot) rendered through the twin's capture cameras, on held-out capture views."""
    from pxr import Usd

    from pipeline.twin.author import FRONT_CAMERA_PATH, camera_intrinsics
    from pipeline.twin.render import psnr, read_cameras, read_splats, render

    stage = Usd.Stage.Open(str(usd_path))
    everything = read_splats(stage, include_invisible=True)
    cameras = read_cameras(stage)
    holdout = capture.holdout_indices(recipe.splat.holdout_every) or list(range(len(cameras)))
    picks = [holdout[i] for i in np.linspace(0, len(holdout) - 1, min(recipe.twin.render_views, len(holdout)))
             .round().astype(int)]
    background = recipe.splat.background
    shots, scores = [], []
    for i in picks:
        cam = cameras[i]
        image = render(everything, cam["K"], cam["width"], cam["height"], cam["camera_to_world"], background)
        photo = capture.image(i).astype(np.float32) / 255
        scores.append(psnr(image, photo))
        shots.append((i, photo, image, scores[-1]))
    # what a user of the twin sees from the recording's front camera: the visible splat, without the capture's robot
    visible = read_splats(stage)
    front = stage.GetPrimAtPath(FRONT_CAMERA_PATH)
    K, w, h = camera_intrinsics(front)
    scale = 160 / w  # a small render: the CPU rasterizer's cost grows with pixels
    from pipeline.twin.render import _world

    front_image = render(visible, np.diag([scale, scale, 1.0]) @ K, int(w * scale), int(h * scale), _world(front),
                         background)
    _preview(shots, front_image, preview_path)
    splat_metrics_path = Path(splat_dir) / "metrics.json"
    splat_psnr = None
    if splat_metrics_path.is_file():
        sm = json.loads(splat_metrics_path.read_text())
        per_view = dict(zip(sm.get("holdout_views", []), sm.get("holdout_psnr_per_view", [])))
        if all(i in per_view for i in picks):
            splat_psnr = float(np.mean([per_view[i] for i in picks]))
    return {"views": picks, "psnr_db": float(np.mean(scores)), "min_psnr_db": float(np.min(scores)),
            "psnr_per_view": [round(s, 3) for s in scores], "splat_psnr_same_views_db": splat_psnr,
            "min_psnr_db_required": recipe.splat.min_holdout_psnr_db}


def _preview(shots: list, front: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(4, len(shots))
    fig, axes = plt.subplots(2, n + 1, figsize=(3.2 * (n + 1), 5.2), squeeze=False)
    for c, (i, photo, image, score) in enumerate(shots[:n]):
        axes[0, c].imshow(photo)
        axes[0, c].set_title(f"capture view {i}", fontsize=9)
        axes[1, c].imshow(image)
        axes[1, c].set_title(f"twin render: {score:.1f} dB", fontsize=9)
    axes[0, n].imshow(front)
    axes[0, n].set_title("twin: front camera\n(splat only; robot Gaussians hidden)", fontsize=9)
    axes[1, n].axis("off")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def stage_problems(summary: dict, errors: list[str]) -> list[str]:
    """Why a stage (its `stage_summary` and `validation_errors`) is not a usable twin (empty when it is)."""
    problems = [f"UsdValidation: {e}" for e in errors[:5]]
    if not summary["articulation_roots"]:
        problems.append("no articulation root in the stage")
    if summary["colliders"] < 2:
        problems.append(f"{summary['colliders']} collider prim(s) besides the robot: at least the support and an "
                        "object")
    if not any(summary["splat_prims"].values()):
        problems.append("no Gaussians in any ParticleField3DGaussianSplat prim")
    if (summary["up_axis"], summary["meters_per_unit"]) != ("Z", 1.0):
        problems.append(f"up axis {summary['up_axis']}, {summary['meters_per_unit']} m per unit: expected Z, metres")
    return problems


def twin_problems(metrics: dict) -> list[str]:
    """The blocking gates, from a metrics dict: why this twin must not be used (empty when it passes)."""
    problems = stage_problems(metrics["stage"], metrics["validation_errors"])
    problems += metrics["settle_problems"]
    views = metrics["views"]
    if views["psnr_db"] < views["min_psnr_db_required"]:
        problems.append(f"twin renders {views['psnr_db']:.2f} dB PSNR against the capture photos < "
                        f"{views['min_psnr_db_required']} dB")
    return problems
