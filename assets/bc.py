"""Group `policy`: the behaviour-cloning baseline every later number is compared to."""

import json

import dagster as dg

from assets.demos import DEMOS_DIR, demos
from assets.sim import WORKCELL_DIR, sim_workcell
from pipeline.common.layout import RUNS_DIR, STAGE_DIRS
from assets.materialize import committed, image_md, stage_errors
from assets.pipes_child import pipes_command
from resources import ComputeDevice, DvcResource, GPU_POOL, ProjectPaths, gpu_op_tags

BC_DIR = STAGE_DIRS["bc_policy"]


@dg.asset(
    group_name="policy",
    deps=[demos, sim_workcell],
    kinds={"lerobot", "pytorch"},
    op_tags=gpu_op_tags("bc_policy"),  # a cluster pod with the recipe's GPUs (resources/k8s.py)
    pool=GPU_POOL,  # GPU stages queue for the GPUs (pool limit; local: one at a time)
    description="lerobot ACT (per params.yaml `bc`) trained on the demos by lerobot's own trainer in a child process "
    "(Dagster Pipes; resumes an interrupted run), with held-out error and closed-loop sim success.",
)
def bc_policy(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource, compute: ComputeDevice,
              pipes_subprocess: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    from pipeline.bc.stage import BcInputError, child_command, finish_run, plan_run

    recipe = paths.recipe()
    with stage_errors(BcInputError):
        run = plan_run(recipe, paths.artifact(DEMOS_DIR), paths.artifact(WORKCELL_DIR) / "workcell.xml",
                       paths.artifact(BC_DIR), paths.artifact(RUNS_DIR), device=compute.device)
    context.log.info(f"BC work folder {run.work_dir} (a rerun with the same recipe and demos resumes there)")
    # The child trains and measures; its log lines and final loss come back through Pipes, stdout/stderr stream
    # into this run's compute logs, and cancelling the run sends it SIGINT.
    reported = pipes_subprocess.run(command=pipes_command(child_command(run)), context=context, cwd=str(paths.root_path),
                                    env={"HF_HUB_OFFLINE": "1"}).get_materialize_result()
    metrics = finish_run(run)
    out = paths.artifact(BC_DIR)
    return committed("bc_policy", dvc, recipe, "bc", metrics=metrics, metadata={
        **reported.metadata,
        "sim_success_ci95": dg.MetadataValue.json(metrics["sim_success_ci95"]),
        "sim_episodes": metrics["sim_episodes"],
        "held_out_action_mse": dg.MetadataValue.float(metrics["held_out_action_mse"]),
        "held_out_action_mse_per_joint": dg.MetadataValue.json(metrics["held_out_action_mse_per_joint"]),
        "resumed_from_step": metrics["resumed_from_step"],
        "device": metrics["device"],
        "loss_and_error": dg.MetadataValue.md(image_md(out / "loss.png", width=880)),
        "rollouts": dg.MetadataValue.md(image_md(out / "rollouts.png", width=420)),
        "path": dg.MetadataValue.path(str(out / "pretrained_model")),
    })


@dg.asset_check(asset=bc_policy, description="The policy moves like the demonstrator: predicted/demonstrated action "
                "magnitude on held-out frames ≥ bc.min_action_magnitude_ratio (below it, an undertrained policy "
                "'twitches' in place). A warning: the checkpoint is still usable.")
def bc_moves_like_demos(paths: ProjectPaths) -> dg.AssetCheckResult:
    metrics = json.loads((paths.artifact(BC_DIR) / "metrics.json").read_text())
    ratio, floor = metrics["action_magnitude_ratio"], metrics["min_action_magnitude_ratio"]
    return dg.AssetCheckResult(
        passed=ratio >= floor,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"action_magnitude_ratio": ratio, "threshold": floor, "train_steps": metrics["train_steps"]},
        description=None if ratio >= floor else f"predicted actions are {ratio:.2f}x the demonstrated ones "
        f"(< {floor}): undertrained; raise bc.steps and rematerialize (training resumes)",
    )


ASSETS = [bc_policy]
CHECKS = [bc_moves_like_demos]
