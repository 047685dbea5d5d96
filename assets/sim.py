"""Group `sim`: the simulated SO-101 workcell every robot-free run records and evaluates in."""


import json

import dagster as dg

from pipeline.common.layout import STAGE_DIRS
from assets.materialize import committed, image_md
from resources import DVC_POOL, DvcResource, ProjectPaths

WORKCELL_DIR = STAGE_DIRS["sim_workcell"]


@dg.asset(
    group_name="sim",
    pool=DVC_POOL,
    kinds={"mujoco", "usd"},
    description="The SO-101 workcell (official robot USD + table, cube, bin, cameras) compiled to MuJoCo, with the "
    "scripted expert's measured success rate.",
)
def sim_workcell(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource) -> dg.MaterializeResult:
    from pipeline.workcell.stage import build_sim_workcell

    recipe = paths.recipe()
    metrics = build_sim_workcell(recipe, paths.artifact(WORKCELL_DIR), log=context.log.info)
    preview = paths.artifact(WORKCELL_DIR) / "preview.png"
    return committed("sim_workcell", dvc, recipe, "workcell", metrics=metrics, metadata={
        "expert_success_rate": dg.MetadataValue.float(metrics["expert_success_rate"]),
        "expert_success_ci95": dg.MetadataValue.json(metrics["expert_success_ci95"]),
        "expert_episodes": metrics["expert_episodes"],
        "build_seconds": dg.MetadataValue.float(metrics["build_seconds"]),
        "preview": dg.MetadataValue.md(image_md(preview)),
        "path": dg.MetadataValue.path(str(paths.artifact(WORKCELL_DIR))),
    })


@dg.asset_check(asset=sim_workcell, blocking=True, description="The scripted expert solves the task often enough "
                "to record demos from (expert.min_success_rate).")
def expert_solves_task(paths: ProjectPaths) -> dg.AssetCheckResult:
    metrics = json.loads((paths.artifact(WORKCELL_DIR) / "metrics.json").read_text())
    rate, floor = metrics["expert_success_rate"], metrics["expert_min_success_rate"]
    return dg.AssetCheckResult(
        passed=rate >= floor,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"success_rate": rate, "required": floor, "failed_seeds": metrics["expert_failed_seeds"]},
        description=None if rate >= floor else f"expert succeeded in {rate:.0%} < {floor:.0%}; failed seeds "
        f"{metrics['expert_failed_seeds']}",
    )


ASSETS = [sim_workcell]
CHECKS = [expert_solves_task]
