"""Build the env config of the residual task from the recipe and the twin (scene, physics backend, task values)."""

from __future__ import annotations

from pathlib import Path

from pipeline.common.recipe import Recipe


class RlError(ValueError):
    """The RL stage cannot run with these inputs or on this machine."""


def physics_dt_for(recipe, twin_usd: Path) -> float:
    """rl.physics_dt_s, or (None, the default) the step the twin was authored with."""
    if recipe.rl.physics_dt_s is not None:
        return float(recipe.rl.physics_dt_s)
    from pipeline.twin.physics import TwinLoadError, authored_physics_dt

    try:
        return authored_physics_dt(Path(twin_usd))
    except TwinLoadError as exc:
        raise RlError(str(exc)) from None


def bin_geometry(twin_usd: Path) -> tuple[tuple[float, float, float], tuple[float, float], float]:
    """(centre, inner half size xy, rim height) of the twin's `bin` collider, from its hull meshes' bounds."""
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(twin_usd))
    prim = stage.GetPrimAtPath("/World/Colliders/bin")
    if not prim.IsValid():
        raise RlError(f"{twin_usd} has no /World/Colliders/bin: the pick-and-place task needs the bin as a static "
                      "collider (twin.dynamic_objects must not list it)")
    cache = UsdGeom.BBoxCache(Usd.TimeCode.Default(), [UsdGeom.Tokens.default_, UsdGeom.Tokens.guide])
    box = cache.ComputeWorldBound(prim).ComputeAlignedRange()
    lo, hi = box.GetMin(), box.GetMax()
    wall = 0.008  # the cube must be inside the walls, not on them
    centre = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2])
    half = (max((hi[0] - lo[0]) / 2 - wall, 0.005), max((hi[1] - lo[1]) / 2 - wall, 0.005))
    return centre, half, hi[2]


def physics_cfg(recipe: Recipe, device: str):
    cfg = recipe.rl
    if cfg.physics == "physx":
        try:
            import isaacsim  # noqa: F401
            from isaaclab_physx.physics import PhysxCfg
        except ImportError as exc:
            raise RlError("rl.physics: physx needs Isaac Sim (`pip install isaacsim[all]` from NVIDIA's index, not "
                          f"PyPI; {exc}); use rl.physics: newton (kit-less, CPU or CUDA)") from None
        return PhysxCfg()
    from isaaclab_newton.physics import MJWarpSolverCfg, NewtonCfg

    twin = recipe.twin
    return NewtonCfg(
        solver_cfg=MJWarpSolverCfg(njmax=200, nconmax=100, cone=twin.friction_cone, impratio=twin.impratio,
                                   integrator="implicitfast"),
        use_cuda_graph=device.startswith("cuda"),
    )


def make_env_cfg(recipe: Recipe, twin_usd: Path, bc_checkpoint: Path, num_envs: int, device: str = "cpu",
                 evaluation: bool = False, seed: int | None = None):
    """The `TwinPickPlaceEnvCfg` for `num_envs` copies of the twin. `evaluation`: no randomization but the cube
    pose, drawn from seeds `seed`, `seed`+1, ... in episode order (the same poses for every policy scored)."""
    import isaaclab.sim as sim_utils
    from isaaclab.actuators import ImplicitActuatorCfg
    from isaaclab.assets import ArticulationCfg, AssetBaseCfg, RigidObjectCfg
    from isaaclab.scene import InteractiveSceneCfg
    from isaaclab.sim import SimulationCfg
    from isaaclab.utils import configclass
    from isaaclab_so101.constants import HOME_JOINT_POS, TCP_OFFSET

    from pipeline.rl.env import TwinPickPlaceEnvCfg

    twin_usd, bc_checkpoint = Path(twin_usd).resolve(), Path(bc_checkpoint).resolve()
    for path, asset in ((twin_usd, "usd_twin"), (bc_checkpoint / "config.json", "bc_policy")):
        if not path.is_file():
            raise RlError(f"no {path}: materialize `{asset}` first")
    cfg, cell = recipe.rl, recipe.workcell
    physics_dt = physics_dt_for(recipe, twin_usd)
    decimation = round(1 / (cell.fps * physics_dt))
    if abs(decimation * cell.fps * physics_dt - 1) > 1e-6:
        raise RlError(f"the physics step {physics_dt} s (rl.physics_dt_s, or the twin's own) does not divide the "
                      f"control period 1/{cell.fps} s")

    @configclass
    class TwinSceneCfg(InteractiveSceneCfg):
        twin = AssetBaseCfg(prim_path="{ENV_REGEX_NS}/Twin", spawn=sim_utils.UsdFileCfg(usd_path=str(twin_usd)))
        # the robot and the cube are prims of the twin: no spawner, Isaac Lab finds them in every copy
        robot = ArticulationCfg(
            prim_path="{ENV_REGEX_NS}/Twin/Robot", spawn=None,
            init_state=ArticulationCfg.InitialStateCfg(joint_pos=dict(HOME_JOINT_POS)),
            # stiffness/damping/effort None: the servo model authored in the twin (identified from the demos)
            actuators={"servos": ImplicitActuatorCfg(joint_names_expr=[".*"], stiffness=None, damping=None)})
        cube = RigidObjectCfg(prim_path="{ENV_REGEX_NS}/Twin/Objects/cube", spawn=None)

    centre, half, rim = bin_geometry(twin_usd)
    own_latency = twin_latency_steps(twin_usd)
    env = TwinPickPlaceEnvCfg()
    env.sim = SimulationCfg(dt=physics_dt, render_interval=decimation, device=device,
                            physics=physics_cfg(recipe, device))
    env.scene = TwinSceneCfg(num_envs=num_envs, env_spacing=1.5, replicate_physics=True)
    env.decimation = decimation
    env.episode_length_s = cfg.episode_seconds
    env.seed = cfg.seed if seed is None else seed
    env.twin_usd, env.bc_checkpoint, env.task = str(twin_usd), str(bc_checkpoint), recipe.demos.task
    env.alpha, env.residual_clip, env.fps = cfg.alpha, cfg.residual_clip, cell.fps
    env.cube_spawn_x = (cell.cube.spawn_x.low, cell.cube.spawn_x.high)
    env.cube_spawn_y = (cell.cube.spawn_y.low, cell.cube.spawn_y.high)
    env.cube_spawn_yaw_deg = (cell.cube.spawn_yaw_deg.low, cell.cube.spawn_yaw_deg.high)
    env.bin_centre, env.bin_half_size, env.bin_rim_z = centre, half, rim
    env.tcp_offset = tuple(TCP_OFFSET)
    env.success_hold_steps = cfg.success_hold_steps
    env.reward_weights = cfg.rewards.model_dump()
    env.action_latency_steps = (own_latency, own_latency)  # the twin's identified servo latency
    if evaluation:
        env.fixed_cube_seeds = True
    else:
        r = resolve_randomization(cfg.randomization, twin_usd)  # training only: evaluation draws no physics
        env.cube_mass_scale = (r.cube_mass_scale.low, r.cube_mass_scale.high)
        env.joint_gain_scale = (r.joint_gain_scale.low, r.joint_gain_scale.high)
        lo, hi = r.action_latency_steps  # never without the twin's own latency
        env.action_latency_steps = (min(lo, own_latency), max(hi, own_latency))
        env.joint_noise_units = r.joint_noise_units
    return env


def twin_latency_steps(twin_usd: Path) -> int:
    """The command latency (control steps) of the twin's servo model: identified by usd_twin, 0 for the prior."""
    from pipeline.twin.author import TwinError, read_servo

    try:
        return int(read_servo(Path(twin_usd))["profile"].get("latency_steps", 0))
    except TwinError:  # a twin authored before servos were recorded: its drives alone, no latency
        return 0


def resolve_randomization(r, twin_usd: Path):
    """rl.randomization with its servo ranges filled in from the twin's identification where they are None:
    stiffness/damping scale 1 +- sigmas x the mean relative spread of kp and kv across the per-episode refits;
    latency the training episodes' best latencies, widened by sigmas x their standard deviation."""
    import numpy as np

    from pipeline.twin.author import TwinError, read_servo

    if r.joint_gain_scale is not None and r.action_latency_steps is not None:
        return r
    try:
        record = read_servo(Path(twin_usd))
    except TwinError as exc:
        raise RlError(f"{exc}; or set rl.randomization.joint_gain_scale and action_latency_steps") from exc
    if record["source"] != "identified":
        raise RlError(f"{twin_usd}: the twin's servos were not identified (source: {record['source']}), so there is "
                      "no uncertainty to randomize by: enable twin.identify, or set rl.randomization."
                      "joint_gain_scale and action_latency_steps")
    spread = record["fit"]["spread"]
    update = {}
    if r.joint_gain_scale is None:
        rel = np.mean([np.mean(list(spread[k].values())) for k in ("kp", "kv")])
        width = min(r.uncertainty_sigmas * float(rel), 0.9)
        update["joint_gain_scale"] = {"low": round(1 - width, 4), "high": round(1 + width, 4)}
    if r.action_latency_steps is None:
        per_episode = np.asarray(spread["latency_steps"]["per_episode"], dtype=float)
        widen = r.uncertainty_sigmas * per_episode.std()
        update["action_latency_steps"] = (int(max(0, np.floor(per_episode.min() - widen))),
                                          int(np.ceil(per_episode.max() + widen)))
    return type(r).model_validate({**r.model_dump(), **update})
