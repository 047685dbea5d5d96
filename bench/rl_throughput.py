"""Residual-RL env throughput next to the raw physics of the same twin, side by side in one run.

    python bench/rl_throughput.py --device cuda --envs 1024 --steps 60      # the GPU figure the rl issue asks for
    .venv/bin/python bench/rl_throughput.py --device cpu --envs 64 --steps 10

(a) raw Newton + MJWarp: `twin.usd` loaded by `newton.ModelBuilder.add_usd`, replicated to N worlds, stepped by
    `SolverMuJoCo` (one CUDA graph per control step on a GPU) — physics steps/s, and the control steps/s they allow
    at the env's decimation;
(b) the Isaac Lab env of `rl_policy` (same twin, N envs, same dt and decimation), stepped with a zero residual:
    env-steps/s, the BC policy's batched inference included; and the BC inference alone.
Prints the ratio (b) / (a) (goal >= 0.5) and a sanity figure (the cubes stay on the table).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def raw_physics(twin_usd: Path, worlds: int, device: str, dt: float, decimation: int, steps: int) -> dict:
    import newton
    import warp as wp

    from pipeline.twin.physics import load_twin

    twin = load_twin(twin_usd, device, worlds=worlds)
    model = twin.model
    solver = newton.solvers.SolverMuJoCo(model, njmax=200, nconmax=100)
    s0, s1, control = model.state(), model.state(), model.control()
    newton.eval_fk(model, model.joint_q, model.joint_qd, s0)
    t = time.perf_counter()
    for _ in range(decimation):  # the first steps compile the kernels
        solver.step(s0, s1, control, None, dt)
        s0, s1 = s1, s0
    wp.synchronize()
    compile_s = time.perf_counter() - t
    graph = None
    if wp.get_device(device).is_cuda:
        with wp.ScopedCapture(device=device) as capture:
            for _ in range(decimation):
                solver.step(s0, s1, control, None, dt)
                s0, s1 = s1, s0
        graph = capture.graph
    t = time.perf_counter()
    for _ in range(steps):
        if graph is not None:
            wp.capture_launch(graph)
        else:
            for _ in range(decimation):
                solver.step(s0, s1, control, None, dt)
                s0, s1 = s1, s0
    wp.synchronize()
    seconds = time.perf_counter() - t
    z = s0.body_q.numpy().reshape(worlds, -1, 7)[:, -1, 2]
    return {"physics_steps_per_s": worlds * steps * decimation / seconds,
            "control_steps_per_s": worlds * steps / seconds, "compile_s": compile_s,
            "cube_z_mm": (float(z.min()) * 1e3, float(z.max()) * 1e3)}


def env_steps(twin_usd: Path, bc: Path, envs: int, device: str, steps: int, profile: bool = False) -> dict:
    import torch

    from pipeline.common.recipe import load_recipe
    from pipeline.rl.env import TwinPickPlaceEnv
    from pipeline.rl.env_cfg import make_env_cfg

    env = TwinPickPlaceEnv(make_env_cfg(load_recipe(), twin_usd, bc, envs, device, evaluation=True, seed=0))
    zeros = torch.zeros(envs, 6, device=env.device)
    with torch.inference_mode():
        env.reset()
        t = time.perf_counter()
        env.step(zeros)
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(steps):
            env.step(zeros)
        torch.cuda.synchronize() if device.startswith("cuda") else None
        seconds = time.perf_counter() - t
        observation = env._observation()
        batch = {k: observation[k].float() for k in env.bc.input_keys}
        graph_vs_eager = float((env.bc.chunk_for(observation) - env.bc._forward(batch)).abs().max())
        bc_ms = {}
        for name, forward in (("as the env runs it", lambda: env.bc(observation)),
                              ("eager", lambda: env.bc._forward(batch))):
            t = time.perf_counter()
            for _ in range(steps):
                forward()
            torch.cuda.synchronize() if device.startswith("cuda") else None
            bc_ms[name] = 1e3 * (time.perf_counter() - t) / steps
        phases = profile_phases(env, zeros, steps) if profile else {}
    return {"env_steps_per_s": envs * steps / seconds, "first_step_s": first_s, "bc_inference_ms": bc_ms,
            "bc_graph_vs_eager_max_abs": graph_vs_eager, "bc_graph": env.bc._graph not in (None, False),
            "physics_handles_decimation": getattr(env, "_physics_handles_decimation", None), "phases_ms": phases,
            "decimation": env.cfg.decimation, "dt": env.cfg.sim.dt}


def profile_phases(env, action, steps: int) -> dict[str, float]:
    """Milliseconds a control step spends in each part of `DirectRLEnv.step` (each part synchronized: the sum
    exceeds the unsynchronized step time)."""
    import torch

    targets = [(env, name) for name in ("_pre_physics_step", "_apply_action", "_get_dones", "_get_rewards",
                                        "_reset_idx", "_get_observations")]
    targets += [(env.sim, "step"), (env.scene, "write_data_to_sim"), (env.scene, "update"), (env.bc, "chunk_for")]
    totals = {f"{type(obj).__name__}.{name}": 0.0 for obj, name in targets}

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            torch.cuda.synchronize()
            totals[key] += time.perf_counter() - t
            return out
        return wrapper

    for obj, name in targets:
        setattr(obj, name, timed(f"{type(obj).__name__}.{name}", getattr(obj, name)))
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    torch.cuda.synchronize()
    totals["step (synchronized parts)"] = time.perf_counter() - t
    for obj, name in targets:
        delattr(obj, name)
    return {k: round(1e3 * v / steps, 3) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twin", type=Path, default=Path("models/twin/twin.usd"))
    parser.add_argument("--bc", type=Path, default=Path("models/bc/pretrained_model"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--envs", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60, help="control steps timed")
    parser.add_argument("--profile", action="store_true", help="also time each part of a step (CUDA)")
    args = parser.parse_args()
    device = "cuda:0" if args.device == "cuda" else args.device
    env = env_steps(args.twin, args.bc, args.envs, device, args.steps, args.profile and device.startswith("cuda"))
    raw = raw_physics(args.twin, args.envs, device, env["dt"], env["decimation"], args.steps)
    ratio = env["env_steps_per_s"] / raw["control_steps_per_s"]
    print(f"{args.envs} envs on {device}, dt {env['dt']:.5f} s x {env['decimation']} physics steps a control step")
    print(f"  raw Newton+MJWarp   {raw['physics_steps_per_s']:12.0f} physics steps/s = "
          f"{raw['control_steps_per_s']:10.0f} control steps/s (compile {raw['compile_s']:.0f} s; cube z "
          f"{raw['cube_z_mm'][0]:.1f}..{raw['cube_z_mm'][1]:.1f} mm)")
    bc_ms = ", ".join(f"{k} {v:.2f} ms" for k, v in env["bc_inference_ms"].items())
    print(f"  Isaac Lab env + BC  {env['env_steps_per_s']:10.0f} env-steps/s (first step {env['first_step_s']:.0f} s; "
          f"BC forward a step: {bc_ms}; CUDA graph {env['bc_graph']}, max |graph - eager| "
          f"{env['bc_graph_vs_eager_max_abs']:.2e} units; physics owns decimation: {env['physics_handles_decimation']})")
    print(f"  ratio env / raw     {ratio:.2f}  (goal >= 0.5)")
    if env["phases_ms"]:
        print("  a step, part by part (ms, synchronized): " + ", ".join(f"{k} {v}" for k, v in env["phases_ms"].items()))


if __name__ == "__main__":
    main()
