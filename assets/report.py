"""Group `report`: BC alone vs BC + residual, paired, on the stand-in robot and in the twin — the report people
read, and its behaviour checks (warnings)."""

import json

import dagster as dg

from assets.bc import BC_DIR, bc_policy
from assets.rl import RL_DIR, rl_policy

from assets.sim import WORKCELL_DIR, sim_workcell
from assets.twin import TWIN_DIR, usd_twin
from pipeline.common.layout import STAGE_DIRS
from assets.materialize import committed, image_md, stage_errors
from resources import DvcResource, ProjectPaths, RobotConnection

EVAL_DIR = STAGE_DIRS["eval_report"]


@dg.asset(
    group_name="report",
    deps=[rl_policy, bc_policy, usd_twin, sim_workcell],
    kinds={"lerobot", "mujoco", "html"},
    description="Paired evaluation of BC alone vs BC + residual on the same seeded initial conditions (alternating "
    "order) on the sim workcell — the stand-in real robot, its own physics and cameras — and on the USD twin, side "
    "by side: the pure method gain on the robot, the twin fidelity gap (BC twin − BC robot), whether the twin's "
    "gain transfers (eval.robot twin: the twin alone; a real SO-101 runs interactively through "
    "`twinloop eval --robot so101_follower`). Wilson intervals, Newcombe paired differences, exact McNemar, cycle "
    "time, failure classes, rollouts as LeRobot datasets, and a self-contained HTML report with lineage.",
)
def eval_report(context: dg.AssetExecutionContext, paths: ProjectPaths, dvc: DvcResource,
                robot: RobotConnection) -> dg.MaterializeResult:
    from pipeline.eval.robots import RobotUnavailable
    from pipeline.eval.stage import EvalError, build_eval_report

    recipe = paths.recipe()
    if robot.kind != "sim" or recipe.eval.robot not in ("twin", "workcell"):
        raise dg.Failure(description="a real-robot evaluation needs an operator at the arm (placing cubes, labelling "
                         "outcomes): run `twinloop eval --robot so101_follower` in a terminal there, then "
                         "`dvc commit eval_report`; this asset evaluates in simulation (robot.kind sim, eval.robot twin "
                         "or workcell)")
    with stage_errors(EvalError, RobotUnavailable):
        metrics = build_eval_report(recipe, paths.root_path, paths.artifact(TWIN_DIR), paths.artifact(BC_DIR),
                                    paths.artifact(RL_DIR), paths.artifact(EVAL_DIR), log=context.log.info,
                                    workcell_dir=paths.artifact(WORKCELL_DIR))
    out = paths.artifact(EVAL_DIR)
    pol, diff = metrics["policies"], metrics["difference"]
    return committed("eval_report", dvc, recipe, "eval", metrics=metrics, metadata={
        "robot": metrics["robot_label"],
        "pairs": metrics["pairs"],
        "bc_success_rate": dg.MetadataValue.float(pol["bc"]["success_rate"]),
        "bc_residual_success_rate": dg.MetadataValue.float(pol["bc_residual"]["success_rate"]),
        "gain_points": dg.MetadataValue.float(diff["points"]),
        "gain_ci95_points": dg.MetadataValue.json(diff["ci95_points"]),
        "mcnemar_exact_p": dg.MetadataValue.float(metrics["paired"]["mcnemar_exact_p"]),
        **({"twin_fidelity_gap_points": dg.MetadataValue.float(metrics["transfer"]["fidelity_gap"]["points"]),
            "twin_fidelity_gap_ci95_points": dg.MetadataValue.json(metrics["transfer"]["fidelity_gap"]["ci95_points"]),
            "twin_gain_points": dg.MetadataValue.float(metrics["transfer"]["gain"]["twin"]["points"]),
            "transfer": dg.MetadataValue.md(image_md(out / "figures" / "transfer.png", width=900))}
           if "transfer" in metrics else {}),
        "report": dg.MetadataValue.md((out / "report.md").read_text().split("![")[0]),
        "summary": dg.MetadataValue.md(image_md(out / "figures" / "summary.png", width=900)),
        "path": dg.MetadataValue.path(str(out / "report.html")),
    })


@dg.asset_check(asset=eval_report, blocking=True, description="The report is complete: both policies ran on every "
                "condition, report.html embeds its figures, and the rollouts dataset holds one episode per rollout.")
def report_is_complete(paths: ProjectPaths) -> dg.AssetCheckResult:
    import csv

    out = paths.artifact(EVAL_DIR)
    metrics = json.loads((out / "metrics.json").read_text())
    problems = []
    pol = metrics["policies"]
    for name in ("bc", "bc_residual"):
        if pol[name]["episodes"] != metrics["pairs"]:
            problems.append(f"{name} ran {pol[name]['episodes']} of {metrics['pairs']} conditions")
    page = (out / "report.html").read_text()
    if page.count("data:image/png;base64,") < 2:
        problems.append("report.html embeds fewer than 2 figures")
    with open(out / "rollouts" / "rollouts.csv") as f:
        rows = list(csv.DictReader(f))
    info = json.loads((out / "rollouts" / "meta" / "info.json").read_text())
    if info["total_episodes"] != len(rows):
        problems.append(f"rollouts dataset has {info['total_episodes']} episodes, rollouts.csv {len(rows)}")
    return dg.AssetCheckResult(passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"episodes": info["total_episodes"], "frames": info["total_frames"]},
                               description="; ".join(problems) or None)


def _behaviour_check(paths: ProjectPaths, name: str) -> dg.AssetCheckResult:
    """One of the report's behaviour checks (pipeline/eval/report.py `fidelity_checks`), as the report computed it."""
    metrics = json.loads((paths.artifact(EVAL_DIR) / "metrics.json").read_text())
    found = [c for c in metrics.get("checks", []) if c["name"] == name]
    if not found:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   description=f"not run: this evaluation has no `{name}` (eval.robot "
                                   f"{metrics.get('robot')}, twin compared: {'transfer' in metrics})")
    c = found[0]
    return dg.AssetCheckResult(passed=c["passed"], severity=dg.AssetCheckSeverity.WARN, description=c["description"],
                               metadata={"robot": metrics["robot_label"]})


@dg.asset_check(asset=eval_report, description="Judged on the robot (the stand-in robot by default): BC + residual "
                "is not worse than BC alone (warns at eval.max_harm_points below it, or a loss with exact McNemar "
                "p < 0.05). A residual that makes the robot worse is not a result.")
def residual_not_worse_than_bc(paths: ProjectPaths) -> dg.AssetCheckResult:
    return _behaviour_check(paths, "residual_not_worse_than_bc")


@dg.asset_check(asset=eval_report, description="The twin reproduces BC: BC alone's success in the twin and on the "
                "robot, same conditions, have overlapping Wilson 95 % intervals; otherwise it names the worse world.")
def twin_reproduces_bc(paths: ProjectPaths) -> dg.AssetCheckResult:
    return _behaviour_check(paths, "twin_reproduces_bc")


ASSETS = [eval_report]
CHECKS = [report_is_complete, residual_not_worse_than_bc, twin_reproduces_bc]
