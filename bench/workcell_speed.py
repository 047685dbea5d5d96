"""Workcell throughput, measured side by side in one run: physics-only control steps vs steps with both cameras
rendered (what demo recording costs), as steps/s, real-time factor and their ratio.

    .venv/bin/python bench/workcell_speed.py [--steps 300] [--workcell models/workcell/workcell.xml]

Needs a compiled workcell (`make demo`, or it compiles one into a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workcell", default="models/workcell/workcell.xml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    from pipeline.common.recipe import load_recipe
    from pipeline.workcell.cell import Workcell

    recipe = load_recipe(args.params)
    xml = Path(args.workcell)
    if not xml.is_file():
        from pipeline.workcell.build import compile_workcell

        xml = compile_workcell(recipe.workcell, Path(tempfile.mkdtemp()) / "workcell")
    wc = Workcell(xml, recipe.workcell)

    def run(with_images: bool) -> float:
        wc.reset(0)
        hold = wc.state()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            wc.step(hold)
            wc.observation(with_images=with_images)
        return args.steps / (time.perf_counter() - t0)

    run(True)  # warm-up: GL context, first frames
    physics, rendered = run(False), run(True)
    fps = recipe.workcell.fps
    cams = recipe.workcell.cameras
    print(f"device: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, MUJOCO_GL={os.environ['MUJOCO_GL']}")
    print(f"physics only      : {physics:8.1f} control steps/s  ({physics / fps:6.1f}x real time)")
    print(f"+ 2 cameras {cams.width}x{cams.height}: {rendered:8.1f} control steps/s  ({rendered / fps:6.1f}x real time)")
    print(f"ratio physics-only / with-cameras: {physics / rendered:.1f}x")
    wc.close()


if __name__ == "__main__":
    main()
