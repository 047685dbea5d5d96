"""Do the demos still succeed in the twin? Each demo's recorded actions, replayed open loop in the twin from the
demo's own cube pose, side by side at several physics steps in one run (docs/rl.md: why rl.physics_dt_s defaults
to the twin's own step).

    .venv/bin/python bench/twin_demo_task_replay.py --project . --episodes 24 --steps 240,480,960

The demos were all successes where they were recorded (the stand-in robot, or a real arm), so the share that
succeeds again in the twin measures its grasp and contact physics from what a real cell gives: the joints' actions
and the cube's start pose (sim demos record it; for a real recording, give the placed pose). Prints per physics step
the outcome counts and the success rate with its Wilson interval, and the ratio to the first step listed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from tqdm import tqdm

    from pipeline.common.recipe import load_recipe
    from pipeline.common.stats import wilson_interval
    from pipeline.eval.robots import Condition
    from pipeline.eval.stage import _twin_robot

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=".", help="folder with params.yaml, data/demos and models/twin")
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--steps", default="240,480,960", help="physics steps per second, comma separated")
    parser.add_argument("--settle-steps", type=int, default=15, help="control steps holding the last action")
    args = parser.parse_args()
    root = Path(args.project)
    recipe = load_recipe(root / "params.yaml")
    data = LeRobotDataset("demos", root=root / "data" / "demos")
    if "observation.environment_state" not in data.features:
        sys.exit("the demos record no cube pose (observation.environment_state): the start pose is unknown")
    eps = data.meta.episodes
    n = min(args.episodes, len(eps["episode_index"]))
    twin = _twin_robot(recipe, root / "models" / "twin", True)
    twin.connect()
    try:
        rows = []
        for rate in [int(s) for s in args.steps.split(",")]:
            dt = 1.0 / rate
            substeps = round(1 / (recipe.workcell.fps * dt))
            if abs(substeps * recipe.workcell.fps * dt - 1) > 1e-6:
                sys.exit(f"{rate} steps/s does not divide the {recipe.workcell.fps} fps control period")
            twin.m.opt.timestep, twin.substeps = dt, substeps
            outcomes = []
            for e in tqdm(range(n), desc=f"1/{rate} s", unit="demo"):
                a, b = int(eps["dataset_from_index"][e]), int(eps["dataset_to_index"][e])
                start = data.hf_dataset[a]["observation.environment_state"].numpy()
                yaw = math.degrees(2 * math.atan2(start[6], start[3]))  # (x y z qw qx qy qz), yaw about z
                twin.start_episode(Condition(e, e, (float(start[0]), float(start[1])), yaw))
                actions = [data.hf_dataset[k]["action"].numpy() for k in range(a, b)]
                for action in actions + [actions[-1]] * args.settle_steps:
                    twin.send_action(dict(zip(twin.action_features, action)))
                outcomes.append(twin.outcome())
            rows.append((rate, Counter(outcomes)))
    finally:
        twin.disconnect()
    print(f"\n{n} demos of {root / 'data' / 'demos'} replayed open loop in {root / 'models' / 'twin'}")
    print(f"{'physics step':>14} {'success':>9} {'Wilson 95 %':>13} {'vs first':>9}  outcomes")
    first = None
    for rate, counts in rows:
        k = counts.get("success", 0)
        lo, hi = wilson_interval(k, n)
        first = first if first is not None else max(k, 1)
        print(f"{'1/' + str(rate) + ' s':>14} {f'{k}/{n}':>9} {f'{100 * lo:.0f}-{100 * hi:.0f} %':>13} "
              f"{k / first:>8.2f}x  {dict(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
