"""Group `policy`, continued: the residual learned on the frozen BC policy in the USD twin."""

import json
import sys

import dagster as dg

from assets.bc import BC_DIR, RUNS_DIR, bc_policy

from assets.twin import TWIN_DIR, usd_twin
from pipeline.common.layout import STAGE_DIRS
from assets.materialize import committed, image_md
from assets.pipes_child import pipes_command
from resources import ComputeDevice, DvcResource, GPU_POOL, ProjectPaths, gpu_op_tags

RL_DIR = STAGE_DIRS["rl_policy"]


@dg.asset(
    group_name="policy",
    deps=[bc_policy, usd_twin],
    kinds={"isaaclab", "newton", "rsl_rl"},
    op_tags=gpu_op_tags("rl_policy"),  # a cluster pod with the recipe's GPUs (resources/k8s.py)
    pool=GPU_POOL,  # GPU stages queue for the GPUs (pool limit; local: one at a time)
    description="A residual on the frozen BC policy (total = BC + alpha * residual), trained with rsl_rl PPO in an "
    "Isaac Lab DirectRLEnv on the USD twin (kit-less, Newton + MJWarp) in a child process (Dagster Pipes; resumes). "
    "The actor sees only what the real cell has; BC alone vs BC + residual scored on the same held-out seeds.",
)
def rl_policy(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource, compute: ComputeDevice,
              pipes_subprocess: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    import torch

    recipe = paths.recipe()
    device = "cuda" if compute.device == "cuda" or (compute.device == "auto" and torch.cuda.is_available()) else "cpu"
    command = [sys.executable, "-m", "pipeline.rl.stage", "--params", str(paths.root_path / "params.yaml"),
               "--twin", str(paths.artifact(TWIN_DIR)), "--bc", str(paths.artifact(BC_DIR)),
               "--out", str(paths.artifact(RL_DIR)), "--runs", str(paths.artifact(RUNS_DIR)), "--device", device]
    # the child's log lines and its wall-clock figures (kept out of the artifact) come back through Pipes
    reported = pipes_subprocess.run(command=pipes_command(command), context=context, cwd=str(paths.root_path),
                                    env={"HF_HUB_OFFLINE": "1"}).get_materialize_result()
    out = paths.artifact(RL_DIR)
    metrics = json.loads((out / "metrics.json").read_text())
    scores = metrics["twin_success"]
    rows = ["| policy | successes | success rate | Wilson 95 % |", "|---|---|---|---|"]
    for name, label in (("bc", "BC alone"), ("bc_residual", "BC + residual")):
        s = scores[name]
        rows.append(f"| {label} | {s['successes']}/{s['episodes']} | {s['success_rate']:.2f} | "
                    f"{s['ci95'][0]:.2f}–{s['ci95'][1]:.2f} |")
    return committed("rl_policy", dvc, recipe, "rl", metadata={
        **reported.metadata,
        "bc_success_rate": dg.MetadataValue.float(scores["bc"]["success_rate"]),
        "bc_residual_success_rate": dg.MetadataValue.float(scores["bc_residual"]["success_rate"]),
        "success_gain_points": dg.MetadataValue.float(metrics["success_gain_points"]),
        "twin_success": dg.MetadataValue.md("\n".join(rows)),
        "iterations": metrics["iterations"],
        "resumed_from_iteration": metrics["resumed_from_iteration"],
        "device": metrics["device"],
        "training": dg.MetadataValue.md(image_md(out / "training.png", width=800)),
        "evaluation": dg.MetadataValue.md(image_md(out / "evaluation.png", width=380)),
        "path": dg.MetadataValue.path(str(out / "policy_manifest.json")),
    })


@dg.asset_check(asset=rl_policy, blocking=True, description="The exported policy is complete: the TorchScript "
                "residual actor loads and maps an actor observation to 6 finite values, and the manifest names the "
                "BC checkpoint it was trained on, by md5.")
def rl_policy_is_loadable(paths: ProjectPaths) -> dg.AssetCheckResult:
    import torch

    from pipeline.common.artifacts import file_md5

    out = paths.artifact(RL_DIR)
    manifest = json.loads((out / "policy_manifest.json").read_text())
    actor = torch.jit.load(str(out / manifest["residual_actor"]))
    residual = actor(torch.zeros(1, len(manifest["actor_observation"])))
    bc_md5 = file_md5(paths.artifact(BC_DIR) / "pretrained_model" / "model.safetensors")
    problems = []
    if residual.shape != (1, 6) or not torch.isfinite(residual).all():
        problems.append(f"the actor returned {tuple(residual.shape)} / non-finite values")
    if manifest["bc_model_md5"] != bc_md5:
        problems.append("the manifest's BC checkpoint is not the current models/bc (retrain the residual)")
    return dg.AssetCheckResult(passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"bc_model_md5": manifest["bc_model_md5"], "alpha": manifest["alpha"]},
                               description="; ".join(problems) or None)


@dg.asset_check(asset=rl_policy, blocking=False, description="In the twin it was trained in: BC + residual succeeds at least as often as BC alone "
                "on the same held-out twin seeds (a warning: short CPU runs rarely learn enough to show a gain).")
def residual_helps_in_twin(paths: ProjectPaths) -> dg.AssetCheckResult:
    metrics = json.loads((paths.artifact(RL_DIR) / "metrics.json").read_text())
    s = metrics["twin_success"]
    gain = metrics["success_gain_points"]
    return dg.AssetCheckResult(
        passed=gain >= 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={"bc": dg.MetadataValue.json(s["bc"]), "bc_residual": dg.MetadataValue.json(s["bc_residual"]),
                  "gain_points": gain},
        description=None if gain >= 0 else f"BC + residual {gain:+.0f} points vs BC alone: train longer "
        "(raise rl.iterations; training resumes) or on a GPU with more envs")


ASSETS = [rl_policy]
CHECKS = [rl_policy_is_loadable, residual_helps_in_twin]
