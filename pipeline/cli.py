"""`twinloop` command line: the stages without Dagster (what `dvc repro` runs), and recipe checks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.common.layout import RUNS_DIR, STAGE_DIRS
from pipeline.common.recipe import RecipeError, load_recipe



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twinloop", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="the recipe (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check-recipe", help="validate params.yaml and print its section hashes")
    run = sub.add_parser("run", help="run one stage into its DVC-tracked folder (no Dagster, no DVC commit)")
    run.add_argument("stage", choices=sorted(STAGE_DIRS))
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where training runs")
    ev = sub.add_parser("eval", help="evaluate BC vs BC + residual on the stand-in robot and the twin (or a real SO-101) into reports/eval")
    ev.add_argument("--robot", choices=("twin", "workcell", "so101_follower"), default=None,
                    help="default: eval.robot")
    ev.add_argument("--dry-run", action="store_true", help="real arm: connect, read joints, move nothing")
    lin = sub.add_parser("lineage", help="the chain that produced an artifact, verified against dvc.lock and disk")
    lin.add_argument("target", help="an asset (stage) name or a path inside its output, e.g. reports/eval")
    lin.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("status", help="which assets are stale and why (dvc status against dvc.lock)")
    mat = sub.add_parser("materialize", help="materialize assets through Dagster (as the UI does)")
    mat.add_argument("select", nargs="?", default="stale",
                     help="a Dagster asset selection ('*' = everything); default 'stale': what changed since its "
                          "dvc.lock entry, and everything downstream of it (nothing when nothing changed)")
    ui = sub.add_parser("ui", help="serve the Dagster UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.command in ("lineage", "status", "materialize", "ui"):
        return _project_command(args)
    try:
        recipe = load_recipe(args.params)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-recipe":
        print(json.dumps({name: recipe.section_hash(name) for name in type(recipe).model_fields}, indent=2))
        return 0
    if args.command == "eval" or args.stage == "eval_report":
        from pipeline.eval.stage import main as run_eval

        extra = ["--robot", args.robot] if getattr(args, "robot", None) else []
        extra += ["--dry-run"] if getattr(args, "dry_run", False) else []
        return run_eval(["--params", args.params, "--twin", STAGE_DIRS["usd_twin"], "--bc", STAGE_DIRS["bc_policy"],
                         "--rl", STAGE_DIRS["rl_policy"], "--out", STAGE_DIRS["eval_report"],
                         "--workcell", STAGE_DIRS["sim_workcell"], *extra])
    if args.stage == "sim_workcell":
        from pipeline.workcell.stage import build_sim_workcell

        print(json.dumps(build_sim_workcell(recipe, Path(STAGE_DIRS["sim_workcell"])), indent=2))
    elif args.stage == "demos":
        from pipeline.demos.checks import DemoData, failures, run_checks
        from pipeline.demos.stage import build_demos

        result = build_demos(recipe, Path(STAGE_DIRS["demos"]), Path(STAGE_DIRS["sim_workcell"]) / "workcell.xml")
        print(json.dumps(result, indent=2))
        bad = failures(run_checks(DemoData.load(STAGE_DIRS["demos"]), recipe.demos.checks,
                                  require_camera=not recipe.demos.state_only, progress=True))
        for outcome in bad:
            print(f"check failed: {outcome.name}: {outcome.message}", file=sys.stderr)
        return 1 if bad else 0
    elif args.stage == "bc_policy":
        from pipeline.bc.stage import BcInputError, build_bc_policy

        try:
            metrics = build_bc_policy(recipe, Path(STAGE_DIRS["demos"]), Path(STAGE_DIRS["sim_workcell"]) / "workcell.xml",
                                      Path(STAGE_DIRS["bc_policy"]), Path(RUNS_DIR), device=args.device)
        except BcInputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({k: v for k, v in metrics.items() if k != "lerobot_train_args"}, indent=2))
    elif args.stage == "scene_capture":
        from pipeline.capture.stage import CaptureError, build_scene_capture

        try:
            metrics = build_scene_capture(recipe, Path(STAGE_DIRS["scene_capture"]),
                                          workcell_xml=Path(STAGE_DIRS["sim_workcell"]) / "workcell.xml")
        except CaptureError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(metrics, indent=2))
    elif args.stage == "gaussian_splat":
        from pipeline.capture.stage import CaptureError
        from pipeline.common.ply import PlyError
        from pipeline.splat.stage import SplatError, build_gaussian_splat

        try:
            metrics = build_gaussian_splat(recipe, Path(STAGE_DIRS["scene_capture"]), Path(STAGE_DIRS["gaussian_splat"]),
                                           Path(RUNS_DIR), device=args.device)
        except (SplatError, CaptureError, PlyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({k: v for k, v in metrics.items() if k != "holdout_psnr_per_view"}, indent=2))
        if metrics["holdout_psnr_db"] < metrics["min_holdout_psnr_db"]:
            print(f"check failed: held-out PSNR {metrics['holdout_psnr_db']:.2f} dB < "
                  f"{metrics['min_holdout_psnr_db']} dB", file=sys.stderr)
            return 1
    elif args.stage == "collision_mesh":
        from pipeline.capture.stage import CaptureError
        from pipeline.mesh.stage import build_collision_mesh
        from pipeline.mesh.fusion import MeshError

        try:
            metrics = build_collision_mesh(recipe, Path(STAGE_DIRS["scene_capture"]), Path(STAGE_DIRS["gaussian_splat"]),
                                           Path(STAGE_DIRS["sim_workcell"]) / "workcell.xml",
                                           Path(STAGE_DIRS["collision_mesh"]), device=args.device)
        except (MeshError, CaptureError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(metrics, indent=2))
        failed = [f"{len(metrics['hulls_failing'])} hull(s) not closed/convex"] if metrics["hulls_failing"] else []
        failed += metrics["hull_count_problems"]
        if metrics["chamfer_mm"] is not None and metrics["chamfer_mm"] > metrics["max_chamfer_mm"]:
            failed.append(f"Chamfer {metrics['chamfer_mm']:.2f} mm > {metrics['max_chamfer_mm']} mm")
        if metrics["objects_expected"] is not None and metrics["objects_found"] != metrics["objects_expected"]:
            failed.append(f"found {metrics['objects_found']} objects, expected {metrics['objects_expected']}")
        for message in failed:
            print(f"check failed: {message}", file=sys.stderr)
        return 1 if failed else 0
    elif args.stage == "usd_twin":
        from pipeline.capture.stage import CaptureError
        from pipeline.twin.author import TwinError
        from pipeline.twin.stage import build_usd_twin, twin_problems

        try:
            metrics = build_usd_twin(recipe, Path(STAGE_DIRS["collision_mesh"]), Path(STAGE_DIRS["gaussian_splat"]),
                                     Path(STAGE_DIRS["scene_capture"]), Path(STAGE_DIRS["sim_workcell"]),
                                     Path(STAGE_DIRS["demos"]), Path(STAGE_DIRS["usd_twin"]),
                                     device="cpu" if args.device == "auto" else args.device, runs_dir=Path(RUNS_DIR))
        except (TwinError, CaptureError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({k: v for k, v in metrics.items() if k != "stage"}, indent=2))
        failed = twin_problems(metrics)
        for message in failed + metrics["replay_warnings"]:
            print(f"{'check failed' if message in failed else 'warning'}: {message}", file=sys.stderr)
        return 1 if failed else 0
    elif args.stage == "rl_policy":
        from pipeline.rl.stage import main as train_rl

        import torch

        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        return train_rl(["--params", args.params, "--twin", STAGE_DIRS["usd_twin"], "--bc", STAGE_DIRS["bc_policy"],
                         "--out", STAGE_DIRS["rl_policy"], "--runs", RUNS_DIR, "--device", device])
    return 0


def _project_command(args) -> int:
    import os
    import subprocess

    if args.command == "lineage":
        from pipeline.common.lineage import LineageError, render, trace

        try:
            lineage = trace(Path.cwd(), args.target)
        except LineageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(lineage.to_json(), indent=2) if args.json else render(lineage))
        return 0 if lineage.ok else 1
    if args.command == "status":
        from pipeline.common.lineage import stale_stages

        stale = stale_stages(Path.cwd())
        if not stale:
            print("up to date: every asset matches dvc.lock")
        for stage, reasons in stale.items():
            print(f"{stage}: stale")
            for reason in reasons:
                print(f"  {reason}")
        return 0
    bin_dir = Path(sys.executable).parent
    dagster = str(bin_dir / "dagster") if (bin_dir / "dagster").exists() else "dagster"
    env = {**os.environ, "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(Path.cwd() / ".dagster_home"))}
    Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
    if args.command == "materialize":
        select = args.select
        if select == "stale":
            from pipeline.common.lineage import stale_stages

            stale = stale_stages(Path.cwd())
            if not stale:
                print("nothing changed since dvc.lock: nothing to materialize")
                return 0
            select = ",".join(f"{stage}*" for stage in stale)
            print(f"stale: {', '.join(stale)} -> materializing {select}")
        command = [dagster, "asset", "materialize", "-m", "assets.definitions", "--select", select]
    else:
        command = [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)]
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
