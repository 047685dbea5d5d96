"""Stage `eval_report`: run BC alone and BC + residual on the same initial conditions and write the report.

    python -m pipeline.eval.stage                          # the stand-in robot (sim workcell) and the twin, as
                                                           # the Dagster asset does
    python -m pipeline.eval.stage --robot twin             # the twin alone (sim proxy)
    python -m pipeline.eval.stage --robot so101_follower   # a real arm: the operator places cubes and labels outcomes
    python -m pipeline.eval.stage --robot so101_follower --dry-run   # connect, read, move nothing

Paired protocol: condition k (seed eval.seed + k) runs both policies, BC first on even k and BC + residual first on
odd k, so drift (battery, lighting, wear) does not favour either. Every rollout is recorded as a LeRobot dataset.

With `eval.compare_twin` the same conditions also run in the twin, first: the report's headline is the robot's BC
and BC + residual success, the pure method gain and the twin fidelity gap, each with its interval, plus the
behaviour checks `residual_not_worse_than_bc` and `twin_reproduces_bc` (warnings; also Dagster asset checks).

Writes `reports/eval/`: report.html (self-contained), report.md, metrics.json, figures/*.png,
rollouts/ (LeRobot v3 dataset; rollouts.csv maps each episode to its policy, condition and outcome),
twin_rollouts/ (the same for the twin), config.json.

User guide: docs/eval.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.common.layout import STAGE_DIRS
from pipeline.common.recipe import Recipe, load_recipe
from pipeline.eval.policies import BCPolicy, PolicyError, ResidualPolicy
from pipeline.eval.robots import Condition, RobotUnavailable, draw_condition

ROLLOUTS_REPO_ID = "twinloop/eval_rollouts"


class EvalError(ValueError):
    """The evaluation cannot run with these inputs (the message says why); nothing was written."""


def load_policies(recipe: Recipe, bc_dir: Path, rl_dir: Path, device: str = "cpu") -> list:
    bc_checkpoint = Path(bc_dir) / "pretrained_model"
    task = recipe.demos.task
    try:
        policies = [BCPolicy(bc_checkpoint, device, task), ResidualPolicy(rl_dir, bc_checkpoint, device, task)]
        for k, extra in enumerate(recipe.eval.extra_policies, start=1):
            p = ResidualPolicy(Path(extra), bc_checkpoint, device, task)
            p.name, p.label = f"bc_residual_{k}", f"BC + residual ({Path(extra).name})"
            policies.append(p)
    except PolicyError as exc:
        raise EvalError(str(exc)) from None
    return policies


def run_pairs(robot, policies: list, conditions: list[Condition], fps: int, max_steps: int, *, cube_z: float = 0.0,
              operator=None, prepare=None, progress=None) -> list:
    """Every policy on every condition; the first two alternate who goes first. `prepare(condition, policy)` sets
    the condition up before each rollout (the twin places the cube; a real cell asks the operator)."""
    from pipeline.eval.loop import run_episode

    rollouts = []
    for cond in conditions:
        order = list(policies) if cond.index % 2 == 0 else [policies[1], policies[0], *policies[2:]]
        for position, policy in enumerate(order):
            if prepare is not None:
                prepare(cond, policy)
            rollouts.append(run_episode(robot, policy, cond, position, fps=fps, max_steps=max_steps, cube_z=cube_z,
                                        operator=operator))
            if progress is not None:
                progress(rollouts[-1])
    return rollouts


def record_rollouts(rollouts: list, out_dir: Path, fps: int, task: str, robot_type: str) -> int:
    """All rollouts as one LeRobot v3 dataset (episode i = rollout i) + rollouts.csv; returns the frame count."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.workcell.joints import LEROBOT_JOINT_NAMES
    from pipeline.workcell.cell import ENVIRONMENT_STATE_NAMES

    joints = {"dtype": "float32", "shape": (6,), "names": list(LEROBOT_JOINT_NAMES)}
    features = {"observation.state": dict(joints), "action": dict(joints),
                "observation.environment_state": {"dtype": "float32", "shape": (7,),
                                                  "names": list(ENVIRONMENT_STATE_NAMES)},
                "policy.base_action": dict(joints), "policy.residual": dict(joints)}
    first = rollouts[0].frames[0]
    for key, value in first.items():
        if key.startswith("observation.images."):
            features[key] = {"dtype": "video", "shape": tuple(value.shape), "names": ["height", "width", "channels"]}
    dataset = LeRobotDataset.create(repo_id=ROLLOUTS_REPO_ID, fps=fps, root=out_dir, robot_type=robot_type,
                                    features=features, use_videos=any(k.startswith("observation.images.")
                                                                      for k in first))
    frames = 0
    with open(out_dir / "rollouts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode_index", "condition", "seed", "policy", "order", "outcome", "steps", "seconds",
                         "cube_x", "cube_y", "cube_yaw_deg", "gain_scale", "mass_scale", "latency_steps"])
        for i, r in enumerate(rollouts):
            for frame in r.frames:
                dataset.add_frame({**{k: v for k, v in frame.items() if k in features}, "task": task})
            dataset.save_episode()
            frames += len(r.frames)
            c = r.condition
            writer.writerow([i, c.index, c.seed, r.policy, r.order, r.outcome, r.steps, f"{r.seconds:.3f}",
                             f"{c.cube_xy[0]:.4f}", f"{c.cube_xy[1]:.4f}", f"{c.cube_yaw_deg:.1f}",
                             f"{c.gain_scale:.3f}", f"{c.mass_scale:.3f}",
                             "own" if c.latency_steps is None else c.latency_steps])
    dataset.finalize()
    return frames


def _twin_robot(recipe: Recipe, twin_dir: Path, report_cube_pose: bool):
    from pipeline.eval.robots import TwinRobot, TwinRobotConfig

    return TwinRobot(TwinRobotConfig(id="twin", twin_usd=Path(twin_dir) / "twin.usd", fps=recipe.workcell.fps,
                                     physics_dt_s=recipe.rl.physics_dt_s,
                                     success_hold_steps=recipe.rl.success_hold_steps,
                                     report_cube_pose=report_cube_pose))


def _workcell_robot(recipe: Recipe, workcell_dir: Path, bc_dir: Path, report_cube_pose: bool):
    from pipeline.eval.robots import WorkcellRobot, WorkcellRobotConfig

    return WorkcellRobot(WorkcellRobotConfig(id="workcell", workcell_xml=Path(workcell_dir) / "workcell.xml",
                                             workcell=recipe.workcell, render_cameras=cameras_read_by(bc_dir),
                                             success_hold_steps=recipe.rl.success_hold_steps,
                                             report_cube_pose=report_cube_pose))


# one sim robot and its policies per worker process (set by _start_worker)
_WORKER: dict = {}


def _start_worker(make_robot, make_policies) -> None:
    import atexit

    import torch

    torch.set_num_threads(1)  # the workers share the cores: one thread each
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    robot = make_robot()
    robot.connect()
    atexit.register(robot.disconnect)
    _WORKER.update(robot=robot, policies=make_policies())


def _run_condition_in_worker(cond: Condition, fps: int, max_steps: int, cube_z: float) -> list:
    robot = _WORKER["robot"]
    return run_pairs(robot, _WORKER["policies"], [cond], fps, max_steps, cube_z=cube_z,
                     prepare=lambda c, _policy: robot.start_episode(c))


def run_sim_pairs(make_robot, policies: list, make_policies, conditions: list[Condition], fps: int, max_steps: int,
                  workers: int, *, cube_z: float = 0.0, progress=None) -> list:
    """`run_pairs` on a simulated robot, in `workers` processes when > 1 (spawned: each builds its own robot with
    `make_robot()` and policies with `make_policies()`, both picklable); rollouts come back in condition order."""
    robot = make_robot()
    try:
        robot.connect()  # here first, also with workers: a missing or broken twin is reported as itself
    except RobotUnavailable as exc:
        raise EvalError(str(exc)) from None
    if workers <= 1 or len(conditions) <= 1:
        try:
            return run_pairs(robot, policies, conditions, fps, max_steps, cube_z=cube_z,
                             prepare=lambda cond, _policy: robot.start_episode(cond), progress=progress)
        finally:
            robot.disconnect()
    robot.disconnect()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    by_condition = {}
    try:
        with ProcessPoolExecutor(min(workers, len(conditions)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(make_robot, make_policies)) as pool:
            futures = [pool.submit(_run_condition_in_worker, c, fps, max_steps, cube_z) for c in conditions]
            for future in as_completed(futures):
                rollouts = future.result()
                by_condition[rollouts[0].condition.index] = rollouts
                for r in rollouts:
                    if progress is not None:
                        progress(r)
    except BrokenProcessPool as exc:  # a worker could not start its robot (the reason is in its traceback above)
        raise EvalError(f"an evaluation worker died ({exc}); run with eval.workers: 1 to see the error here") from None
    return [r for c in conditions for r in by_condition[c.index]]


def evaluate_on_twin(recipe: Recipe, twin_dir: Path, bc_dir: Path, rl_dir: Path, policies: list, progress=None,
                     report_cube_pose: bool = True) -> tuple[list, tuple]:
    """The pairs in the twin (sim proxy); returns the rollouts and the twin's bin footprint (xy min, xy max)."""
    from functools import partial

    cfg = recipe.eval
    rand = None
    if cfg.randomize:  # rl's ranges, the servo ones resolved from the twin's identification as rl resolves them
        from pipeline.rl.env_cfg import resolve_randomization

        rand = resolve_randomization(recipe.rl.randomization, Path(twin_dir) / "twin.usd")
    conditions = [draw_condition(k, cfg.seed + k, recipe.workcell, rand) for k in range(cfg.pairs)]
    max_steps = int(round(cfg.episode_seconds * recipe.workcell.fps))
    rollouts = run_sim_pairs(partial(_twin_robot, recipe, twin_dir, report_cube_pose), policies,
                             partial(load_policies, recipe, bc_dir, rl_dir), conditions, recipe.workcell.fps,
                             max_steps, cfg.workers, progress=progress)
    return rollouts, twin_bin_box(Path(twin_dir) / "twin.usd")


def twin_bin_box(twin_usd: Path) -> tuple:
    """The twin's bin footprint, ((x min, y min), (x max, y max)), from its `bin` collider."""
    from pipeline.rl.env_cfg import bin_geometry

    centre, half, _ = bin_geometry(twin_usd)
    return (centre[0] - half[0], centre[1] - half[1]), (centre[0] + half[0], centre[1] + half[1])


def cameras_read_by(bc_dir: Path) -> tuple[str, ...]:
    """The camera names the BC checkpoint takes as input (`observation.images.<name>` in its lerobot config)."""
    config = json.loads((Path(bc_dir) / "pretrained_model" / "config.json").read_text())
    prefix = "observation.images."
    return tuple(k[len(prefix):] for k in config.get("input_features", {}) if k.startswith(prefix))


def evaluate_on_workcell(recipe: Recipe, workcell_dir: Path, bc_dir: Path, rl_dir: Path, policies: list,
                         progress=None, report_cube_pose: bool = True):
    """The same pairs on the sim workcell, the stand-in real robot: the policies see what a real arm gives (joints,
    the cameras the BC checkpoint reads) and, with `report_cube_pose`, the live cube pose as a tracker on the cell
    would give (otherwise the loop hands the placed pose, frozen); the workcell's own physics decides the outcome."""
    from functools import partial

    cfg = recipe.eval
    conditions = [draw_condition(k, cfg.seed + k, recipe.workcell) for k in range(cfg.pairs)]  # its physics is its own
    max_steps = int(round(cfg.episode_seconds * recipe.workcell.fps))
    rollouts = run_sim_pairs(partial(_workcell_robot, recipe, workcell_dir, bc_dir, report_cube_pose), policies,
                             partial(load_policies, recipe, bc_dir, rl_dir), conditions, recipe.workcell.fps,
                             max_steps, cfg.workers, cube_z=recipe.workcell.cube.size / 2, progress=progress)
    lo = np.asarray(recipe.workcell.bin.center_xy) - np.asarray(recipe.workcell.bin.inner_size_xy) / 2
    hi = np.asarray(recipe.workcell.bin.center_xy) + np.asarray(recipe.workcell.bin.inner_size_xy) / 2
    return rollouts, (tuple(lo), tuple(hi))


ROBOT_NAMES = {"workcell": "the stand-in robot", "so101_follower": "the real SO-101", "twin": "the twin"}


def build_eval_report(recipe: Recipe, root: Path, twin_dir: Path, bc_dir: Path, rl_dir: Path, out_dir: Path,
                      robot_kind: str | None = None, log=print, workcell_dir: Path | None = None) -> dict:
    """The paired evaluation on the robot — the sim workcell (`"workcell"`, the stand-in real robot, default), a real
    arm (`"so101_follower"`) or the twin alone (`"twin"`) — and, with `eval.compare_twin`, the same conditions in the
    twin: the report puts both worlds side by side (fidelity gap, does the twin's gain transfer)."""
    from tqdm import tqdm

    from pipeline.common.artifacts import replace_dir, staging_dir, write_config, write_metrics
    from pipeline.eval import report

    cfg = recipe.eval
    kind = robot_kind or cfg.robot
    workcell_dir = Path(workcell_dir or STAGE_DIRS["sim_workcell"])
    with_twin = kind != "twin" and cfg.compare_twin
    policies = load_policies(recipe, bc_dir, rl_dir)
    t0 = time.perf_counter()
    total = cfg.pairs * len(policies) * (2 if with_twin else 1)
    bar = tqdm(total=total, desc="eval rollouts", unit="ep", disable=not sys.stderr.isatty())
    done = {"n": 0}

    def progress(r):
        bar.update(1)
        done["n"] += 1
        if done["n"] % max(1, total // 10) == 0 or done["n"] == total:
            log(f"{done['n']}/{total} rollouts; last: {r.policy} on condition {r.condition.index}: {r.outcome}")

    twin_rollouts = twin_bin_box = None
    # a real arm has no cube tracker: its twin column gets the placed pose too, so the worlds compare
    tracked = cfg.cube_pose == "tracked" and kind != "so101_follower"
    cube_seen = "cube pose tracked" if tracked else "cube pose: the placed one"
    if kind == "twin" or with_twin:  # first: on a real arm the operator is not kept waiting in between
        twin_rollouts, twin_bin_box = evaluate_on_twin(recipe, twin_dir, bc_dir, rl_dir, policies, progress,
                                                       report_cube_pose=tracked)
    twin_label = (f"the USD twin (sim proxy, held-out randomization; {cube_seen})" if cfg.randomize else
                  f"the USD twin (sim proxy; {cube_seen})")
    if kind == "twin":
        rollouts, robot_label, robot_type, bin_box = twin_rollouts, twin_label, "so101_follower_twin", twin_bin_box
    elif kind == "workcell":
        rollouts, bin_box = evaluate_on_workcell(recipe, workcell_dir, bc_dir, rl_dir, policies, progress,
                                                 report_cube_pose=tracked)
        robot_label = ("the sim workcell, the stand-in real robot (its own physics and cameras; the twin never reads "
                       f"them; {cube_seen})")
        robot_type = "so101_follower_workcell"
    else:
        rollouts, bin_box = evaluate_on_real_arm(recipe, twin_dir, policies, progress)
        robot_label = f"a real SO-101 ({cfg.real.port})"
        robot_type = "so101_follower"
    bar.close()
    seconds = time.perf_counter() - t0
    robot_name = ROBOT_NAMES[kind]
    summary = report.summarize(rollouts, recipe.workcell.fps)
    transfer_info = report.transfer(rollouts, twin_rollouts) if with_twin else None
    checks = report.fidelity_checks(summary, transfer_info, cfg.max_harm_points, robot_name)
    log(f"{robot_name}: BC {summary['policies']['bc']['successes']}/{summary['pairs']}, BC + residual "
        f"{summary['policies']['bc_residual']['successes']}/{summary['pairs']} ({seconds:.0f} s)")
    if transfer_info is not None:
        tw = transfer_info["success"]["twin"]
        log(f"the twin: BC {tw['bc']['successes']}/{tw['bc']['episodes']}, BC + residual "
            f"{tw['bc_residual']['successes']}/{tw['bc_residual']['episodes']}; fidelity gap "
            f"{transfer_info['fidelity_gap']['points']:+.1f} points")
    for c in checks:
        if not c["passed"]:
            log(f"warning ({c['name']}): {c['description']}")

    staging = staging_dir(Path(out_dir))
    (staging / "figures").mkdir(parents=True)
    frames = record_rollouts(rollouts, staging / "rollouts", recipe.workcell.fps, recipe.demos.task, robot_type)
    if with_twin:
        frames += record_rollouts(twin_rollouts, staging / "twin_rollouts", recipe.workcell.fps, recipe.demos.task,
                                  "so101_follower_twin")
    res = next(p for p in policies if p.name == "bc_residual")
    used = {"BC checkpoint": Path(bc_dir) / "pretrained_model" / "model.safetensors",
            "residual actor": Path(rl_dir) / res.manifest["residual_actor"]}
    if twin_rollouts is not None:
        used["twin"] = Path(twin_dir) / "twin.usd"
    if kind == "workcell":
        used["workcell (stand-in robot)"] = workcell_dir / "workcell.xml"
    lineage = report.lineage(root, used)
    figs = {}
    if transfer_info is not None:
        figs["transfer"] = report.transfer_figure(transfer_info, robot_name)
    figs.update(report.figures(summary, rollouts, bin_box, res.alpha, cfg.failure_examples))
    files = {}
    for name, png in figs.items():
        (staging / "figures" / f"{name}.png").write_bytes(png)
        files[name] = f"figures/{name}.png"
    md = report.markdown(summary, rollouts, lineage, robot_label, files, transfer_info, checks, robot_name)
    (staging / "report.md").write_text(md)
    (staging / "report.html").write_text(report.html_document(md, figs))
    metrics = {"robot": kind, "robot_label": robot_label, **summary, "rollout_frames": frames,
               "seconds": round(seconds, 1), "checks": checks, "lineage": lineage}
    if transfer_info is not None:
        metrics["twin"] = {"label": twin_label, **report.summarize(twin_rollouts, recipe.workcell.fps)}
        metrics["transfer"] = transfer_info
    write_metrics(staging, metrics)
    write_config(staging, {"eval": cfg.model_dump(mode="json")})
    replace_dir(staging, Path(out_dir))
    return metrics


def evaluate_on_real_arm(recipe: Recipe, twin_dir: Path, policies: list, progress=None):
    """The same pairs on a real follower: the operator places the cube at each condition's pose and labels each
    outcome with one key; torque is released on any exit (lerobot's disconnect), Ctrl-C included."""
    from pipeline.eval.loop import OperatorKeys
    from pipeline.eval.robots import real_robot_from_recipe

    cfg = recipe.eval
    robot = real_robot_from_recipe(recipe)
    conditions = [draw_condition(k, cfg.seed + k, recipe.workcell) for k in range(cfg.pairs)]
    max_steps = int(round(cfg.episode_seconds * recipe.workcell.fps))
    bin_box = twin_bin_box(Path(twin_dir) / "twin.usd")

    def prepare(cond: Condition, policy) -> None:
        input(f"\ncondition {cond.index} ({policy.label}): place the cube at x={cond.cube_xy[0]:.3f} m, "
              f"y={cond.cube_xy[1]:.3f} m, yaw {cond.cube_yaw_deg:.0f} deg (robot base frame); Enter to start ")

    robot.connect()
    try:
        with OperatorKeys() as keys:
            rollouts = run_pairs(robot, policies, conditions, recipe.workcell.fps, max_steps,
                                 cube_z=cfg.real.cube_z_m, operator=keys, prepare=prepare, progress=progress)
    finally:
        robot.disconnect()  # disable_torque_on_disconnect: the arm goes limp whatever happened
    return rollouts, bin_box


def dry_run(recipe: Recipe, seconds: float = 3.0, log=print) -> dict:
    """Connect to the real follower, read joints (and cameras) for `seconds`, send nothing, disconnect."""
    from pipeline.eval.robots import real_robot_from_recipe
    from pipeline.workcell.joints import LEROBOT_JOINT_NAMES

    robot = real_robot_from_recipe(recipe)
    robot.connect()
    readings = []
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            obs = robot.get_observation()
            readings.append([obs[k] for k in LEROBOT_JOINT_NAMES])
            time.sleep(1 / recipe.workcell.fps)
    finally:
        robot.disconnect()
    arr = np.asarray(readings)
    result = {"reads": len(arr), "mean": dict(zip(LEROBOT_JOINT_NAMES, arr.mean(0).round(2).tolist())),
              "spread": dict(zip(LEROBOT_JOINT_NAMES, np.ptp(arr, 0).round(2).tolist()))}
    log(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.eval.stage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument("--twin", default=STAGE_DIRS["usd_twin"])
    parser.add_argument("--bc", default=STAGE_DIRS["bc_policy"])
    parser.add_argument("--rl", default=STAGE_DIRS["rl_policy"])
    parser.add_argument("--out", default=STAGE_DIRS["eval_report"])
    parser.add_argument("--workcell", default=STAGE_DIRS["sim_workcell"])
    parser.add_argument("--robot", choices=("twin", "workcell", "so101_follower"), default=None,
                        help="default: eval.robot")
    parser.add_argument("--dry-run", action="store_true", help="real arm: connect and read, move nothing")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.params)
        if args.dry_run:
            dry_run(recipe)
            return 0
        metrics = build_eval_report(recipe, Path(args.root), Path(args.twin), Path(args.bc), Path(args.rl),
                                    Path(args.out), args.robot, workcell_dir=Path(args.workcell))
    except (EvalError, RobotUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("lineage",)}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
