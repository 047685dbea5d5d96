"""Group `data`: the demonstrations every policy learns from, their quality gate, and the inbox that grows them."""

import tempfile
from pathlib import Path

import dagster as dg

from assets.sim import WORKCELL_DIR, sim_workcell
from pipeline.demos.checks import CHECK_SPECS
from pipeline.common.layout import INBOX_DIR, STAGE_DIRS
from assets.materialize import committed, image_md, stage_errors
from resources import DVC_POOL, DvcResource, ProjectPaths

DEMOS_DIR = STAGE_DIRS["demos"]



class DemosRunConfig(dg.Config):
    inbox_batch: str = ""  # set by the inbox sensor: merge this batch into the demos instead of rebuilding them


@dg.asset(
    group_name="data",
    pool=DVC_POOL,
    deps=[sim_workcell],
    kinds={"lerobot"},
    description="LeRobot v3.0 SO-101 demonstrations (data/demos): recorded in the sim workcell, imported, or "
    "downloaded per params.yaml `demos`; grown by the inbox sensor.",
)
def demos(context: dg.AssetExecutionContext, config: DemosRunConfig, paths: ProjectPaths,
          dvc: DvcResource) -> dg.MaterializeResult:
    from pipeline.demos.stage import DemoInputError, build_demos, contact_sheet, summarize
    from pipeline.demos.inbox import BatchRejected, ingest_batch

    recipe = paths.recipe()
    root = paths.artifact(DEMOS_DIR)
    with stage_errors(DemoInputError, BatchRejected):
        if config.inbox_batch:
            result = ingest_batch(paths.artifact(INBOX_DIR), config.inbox_batch, root, recipe, progress=True)
        else:
            result = build_demos(recipe, root, workcell_xml=paths.artifact(WORKCELL_DIR) / "workcell.xml")
    context.log.info(f"demos: {result}")
    summary = summarize(root)
    metadata = {
        "episodes": summary["episodes"],
        "frames": summary["frames"],
        "fps": summary["fps"],
        "tasks": dg.MetadataValue.json(summary["tasks"]),
        "cameras": dg.MetadataValue.json(summary["cameras"]),
        "action_range": dg.MetadataValue.json(summary["action_range"]),
        "source": dg.MetadataValue.json(result),
        "path": dg.MetadataValue.path(str(root)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sheet = contact_sheet(root, Path(tmp) / "sheet.png")
        if sheet is not None:
            metadata["contact_sheet"] = dg.MetadataValue.md(image_md(sheet, width=960))
    return committed("demos", dvc, recipe, "demos", metadata, None)


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(name, asset=demos, blocking=blocking) for name, blocking in CHECK_SPECS],
    description="Blocking: schema, timing, finite values, joint limits, videos (first/last frame of each episode), "
    "video frames (every frame of every camera decodes at its parquet timestamp: what a damaged video imported "
    "through demos.source local or hub would break), episode count. Warnings: idle episodes, state-action lag, "
    "near-duplicate episodes.",
)
def demos_quality(paths: ProjectPaths):
    from pipeline.demos.checks import DemoData, run_checks

    recipe = paths.recipe()
    outcomes = run_checks(DemoData.load(paths.artifact(DEMOS_DIR)), recipe.demos.checks,
                          require_camera=not recipe.demos.state_only, progress=True)
    for o in outcomes:  # one per CHECK_SPECS entry, in its order (a check that could not run is a failure)
        yield dg.AssetCheckResult(
            check_name=o.name, passed=o.passed, description=o.message, metadata=o.details,
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
        )


# What new demos make stale, by declaration: everything downstream of `demos` except the twin group (the twin is
# rebuilt from a new capture, not from new demos; usd_twin only replays the demos to measure the sim<->real gap).
RETRAIN_AFTER_DEMOS = dg.AssetSelection.assets("demos").downstream() - dg.AssetSelection.groups("twin")
POLICY_CHAIN = RETRAIN_AFTER_DEMOS - dg.AssetSelection.assets("demos")


@dg.sensor(asset_selection=RETRAIN_AFTER_DEMOS, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="New LeRobot datasets in data/inbox/<batch>/ are screened and merged into the demos (or "
           "quarantined in data/inbox/rejected/); the same run re-trains what depends on the demos (bc_policy -> "
           "rl_policy -> eval_report), never the twin chain.")
def demos_inbox_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths):
    from pipeline.demos.inbox import pending_batches

    inbox = paths.artifact(INBOX_DIR)
    for name in pending_batches(inbox, settled_for_s=10):
        stamp = (inbox / name).lstat().st_mtime_ns
        yield dg.RunRequest(
            run_key=f"{name}:{stamp}",  # no asset_selection: the sensor's, demos and its policy chain
            run_config=dg.RunConfig(ops={"demos": DemosRunConfig(inbox_batch=name)}),
        )


@dg.schedule(cron_schedule="0 3 * * *", target=POLICY_CHAIN, default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Nightly: re-train bc_policy -> rl_policy -> eval_report when the demos changed since "
             "bc_policy was last trained (compared by DVC md5); skips otherwise.")
def nightly_retrain(context: dg.ScheduleEvaluationContext, paths: ProjectPaths):
    from pipeline.common.lineage import demos_changed_since_training

    reason = demos_changed_since_training(paths.root_path)
    if reason is None:
        return dg.SkipReason("the demos are the ones bc_policy was trained on: nothing to re-train")
    context.log.info(reason)
    return dg.RunRequest(run_key=None, tags={"twinloop/reason": reason[:200]})


ASSETS = [demos]
CHECKS = [demos_quality]
SENSORS = [demos_inbox_sensor]
SCHEDULES = [nightly_retrain]
