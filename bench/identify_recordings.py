"""Servo identification (docs/twin.md#servos) on a built twin, per recording: held-out open-loop RMSE, prior vs
identified, with the recipe's `twin.identify` — the same function `usd_twin` runs (pipeline.twin.stage.identify_servos).

    PYTHONPATH=. MUJOCO_GL=egl python bench/identify_recordings.py --twin models/twin \\
        --recording demos=data/demos --recording real=../shared/data/so101-real-pickplace [--params params.yaml]

Writes nothing into the twin: the per-recording profiles and identify.png go to --out (default a temp folder)."""

import argparse
import json
import tempfile
import time
from pathlib import Path

from pipeline.common.recipe import load_recipe
from pipeline.twin.physics import load_twin
from pipeline.twin.stage import identify_figure, identify_servos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--twin", type=Path, required=True, help="a usd_twin output folder (its twin.usd)")
    ap.add_argument("--recording", action="append", required=True, metavar="NAME=PATH",
                    help="a LeRobot dataset; NAME 'demos' uses twin.identify.heldout_episodes, others real_heldout_episodes")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = load_recipe(args.params).twin
    sources = {k: Path(v) for k, v in (r.split("=", 1) for r in args.recording)}
    out = args.out or Path(tempfile.mkdtemp(prefix="identify_"))
    out.mkdir(parents=True, exist_ok=True)
    twin = load_twin(args.twin / "twin.usd")
    t = time.perf_counter()
    report, _, curves = identify_servos(twin, cfg, sources, {k: str(v) for k, v in sources.items()}, out, print,
                                        progress=True, cache_root=None)
    identify_figure(curves, out / "identify.png")
    for name, r in report.items():
        if not r.get("identified"):
            print(f"{name}: not identified ({r.get('why')})")
            continue
        before, after = r["heldout"]["prior"], r["heldout"]["identified"]
        print(f"{name}: held out {r['heldout_episodes']}: mean RMSE {before['mean_rmse_deg']:.3f} deg (prior) -> "
              f"{after['mean_rmse_deg']:.3f} deg (identified); ratio {after['mean_rmse_deg'] / before['mean_rmse_deg']:.3f}; "
              f"train {r['train_rmse_deg']:.3f} deg; latency {r['profile']['latency_steps']} frames; "
              f"{r['fit']['replays']} replays; calibration kept at the prior: {r['fit']['calibration_at_prior']}")
        print("  per joint held-out RMSE (identified):", json.dumps(after["rmse_deg"]))
    print(f"{time.perf_counter() - t:.0f} s; profiles and identify.png in {out}")


if __name__ == "__main__":
    main()
