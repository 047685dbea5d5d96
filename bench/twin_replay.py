"""Open-loop replay in the twin, side by side in one run: Newton's `SolverMuJoCo.step` per physics step (MuJoCo's
C engine behind Newton's state copies) vs stepping the same converted MuJoCo model natively (what `usd_twin` does),
and the twin as authored (contact gap 5 mm) vs Newton's default 0.1 m gap.

    .venv/bin/python bench/twin_replay.py --twin models/twin/twin.usd --dataset ../shared/data/so101-real-pickplace

Prints physics steps/s per configuration, their ratios, and the tracking RMSE of each (the replays must agree: a
fast but different simulation is not a result).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _newton_step_replay(twin, states, actions, substeps) -> np.ndarray:
    import newton

    from pipeline.twin.physics import make_solver

    model = twin.model
    solver = make_solver(twin)
    s0, s1, control = model.state(), model.state(), model.control()
    q = model.joint_q.numpy().copy()
    q[twin.robot_dofs] = states[0]
    s0.joint_q.assign(q)
    newton.eval_fk(model, s0.joint_q, s0.joint_qd, s0)
    target = control.joint_target_q.numpy()
    out = []
    for t in range(len(states) - 1):
        target[twin.robot_dofs] = actions[t]
        control.joint_target_q.assign(target)
        for _ in range(substeps):
            solver.step(s0, s1, control, None, twin.physics_dt)
            s0, s1 = s1, s0
        out.append(s0.joint_q.numpy()[twin.robot_dofs].copy())
    return np.degrees(np.array(out))


def _with_gap(twin_usd: Path, gap: float, workdir: Path) -> Path:
    """A copy of the twin with every collider's newton:contactGap set to `gap`."""
    from pxr import Usd, UsdPhysics

    copy = workdir / "twin"
    shutil.copytree(twin_usd.parent, copy)
    stage = Usd.Stage.Open(str(copy / twin_usd.name))
    for prim in stage.Traverse():
        if prim.HasAPI(UsdPhysics.CollisionAPI) and prim.HasAttribute("newton:contactGap"):
            prim.GetAttribute("newton:contactGap").Set(gap)
    stage.Save()
    return copy / twin_usd.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twin", type=Path, default=Path("models/twin/twin.usd"))
    parser.add_argument("--dataset", type=Path, default=Path("../shared/data/so101-real-pickplace"))
    parser.add_argument("--frames", type=int, default=120, help="frames of the first episode replayed")
    args = parser.parse_args()

    from pipeline.demos.checks import DemoData
    from pipeline.workcell.joints import LIMITS_HI_RAD, LIMITS_LO_RAD, lerobot_to_sim
    from pipeline.twin.physics import load_twin
    from pipeline.twin.replay import replay_dataset

    data = DemoData.load(args.dataset)
    _, group = next(iter(data.episodes()))
    group = group.iloc[:args.frames + 1]
    states = lerobot_to_sim(data.joints(group, "observation.state"))
    actions = np.clip(lerobot_to_sim(data.joints(group, "action")), LIMITS_LO_RAD, LIMITS_HI_RAD)
    recorded = np.degrees(states[1:])
    twin = load_twin(args.twin)
    substeps = int(round(1.0 / (data.meta.fps * twin.physics_dt)))
    steps = (len(states) - 1) * substeps
    rows = []

    t = time.perf_counter()
    replayed = _newton_step_replay(twin, states, actions, substeps)
    rows.append(("Newton SolverMuJoCo.step (MuJoCo C)", steps / (time.perf_counter() - t), replayed))

    # the asset's path (the whole first episode; speeds compare per physics step)
    def native(twin_model) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        rep = replay_dataset(twin_model, args.dataset, max_episodes=1)[0]
        seconds = time.perf_counter() - t0
        return len(rep.replayed_deg) * substeps / seconds, rep.replayed_deg[:args.frames]

    speed, replayed = native(twin)
    rows.append(("native mj_step on Newton's model, gap 5 mm (usd_twin)", speed, replayed))
    with tempfile.TemporaryDirectory() as tmp:
        speed, replayed = native(load_twin(_with_gap(args.twin, 0.1, Path(tmp))))
    rows.append(("native mj_step, Newton's default gap 0.1 m", speed, replayed))

    base = rows[0][1]
    print(f"{platform.processor() or platform.machine()}, {args.dataset.name} episode 0, {args.frames} frames, "
          f"{substeps} physics steps a frame")
    for name, speed, rep in rows:
        n = min(len(rep), len(recorded))
        rmse = float(np.sqrt(((rep[:n] - recorded[:n]) ** 2).mean()))
        print(f"  {name:55s} {speed:10.0f} steps/s  ratio {speed / base:7.1f}  RMSE vs recording {rmse:.3f} deg")


if __name__ == "__main__":
    main()
