"""Physics throughput of the workcell, side by side in one run: native MuJoCo (CPU, one world, the demo/expert
path) vs Newton + MJWarp on the same scene, batched over N worlds (CPU here, CUDA on a GPU machine).

    .venv/bin/python bench/newton_workcell.py --device cuda --worlds 1,256,1024 --steps 200

Prints aggregate physics steps/s per configuration, its ratio to native MuJoCo, and a sanity figure (the cubes
rest on the table: mean height error in mm) so a fast but broken simulation does not pass for a result.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def native_mujoco_steps_per_s(xml: Path, steps: int) -> float:
    import mujoco

    model = mujoco.MjModel.from_xml_path(str(xml))
    data = mujoco.MjData(model)
    mujoco.mj_step(model, data, nstep=10)
    t0 = time.perf_counter()
    mujoco.mj_step(model, data, nstep=steps)
    return steps / (time.perf_counter() - t0)


def newton_steps_per_s(single, worlds: int, device: str, steps: int, dt: float, cube_half: float):
    import newton
    import numpy as np
    import warp as wp

    from pipeline.workcell.build import replicate_workcell

    model = replicate_workcell(single, worlds, device)
    solver = newton.solvers.SolverMuJoCo(model, njmax=300, nconmax=150)
    s0, s1, control = model.state(), model.state(), model.control()
    newton.eval_fk(model, model.joint_q, model.joint_qd, s0)
    t0 = time.perf_counter()
    solver.step(s0, s1, control, None, dt)  # first step compiles the kernels
    s0, s1 = s1, s0
    wp.synchronize()
    compile_s = time.perf_counter() - t0
    chunk = 10
    graph = None
    if wp.get_device(device).is_cuda:  # replay the step loop as one CUDA graph: no Python per step
        with wp.ScopedCapture(device=device) as capture:
            for _ in range(chunk):
                solver.step(s0, s1, control, None, dt)
                s0, s1 = s1, s0
        graph = capture.graph
    t0 = time.perf_counter()
    for _ in range(max(1, steps // chunk)):
        if graph is not None:
            wp.capture_launch(graph)
        else:
            for _ in range(chunk):
                solver.step(s0, s1, control, None, dt)
                s0, s1 = s1, s0
    wp.synchronize()
    elapsed = time.perf_counter() - t0
    body_q = s0.body_q.numpy().reshape(worlds, -1, 7)
    cube_z = body_q[:, -1, 2]
    height_err_mm = float(np.mean(np.abs(cube_z - cube_half)) * 1000)
    return worlds * max(1, steps // chunk) * chunk / elapsed, compile_s, height_err_mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worlds", default="1,16")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    from pipeline.common.recipe import load_recipe
    from pipeline.workcell.build import build_newton_builder, compile_workcell

    recipe = load_recipe(args.params)
    cfg = recipe.workcell
    dt = 1.0 / (cfg.fps * cfg.physics_substeps)
    xml = compile_workcell(cfg, Path(tempfile.mkdtemp()) / "workcell")
    base = native_mujoco_steps_per_s(xml, steps=2000)
    print(f"host: {platform.machine()}, {os.cpu_count()} cores; newton device: {args.device}; dt {dt * 1000:.2f} ms")
    print(f"native MuJoCo, 1 world (CPU, 1 thread): {base:10.0f} physics steps/s   ratio 1.00")
    single = build_newton_builder(cfg)
    for worlds in (int(w) for w in args.worlds.split(",")):
        rate, compile_s, err = newton_steps_per_s(single, worlds, args.device, args.steps, dt, cfg.cube.size / 2)
        print(f"Newton+MJWarp, {worlds:5d} worlds ({args.device}): {rate:10.0f} physics steps/s   ratio "
              f"{rate / base:6.2f}   first step {compile_s:5.1f} s   cube height error {err:.2f} mm")


if __name__ == "__main__":
    main()
