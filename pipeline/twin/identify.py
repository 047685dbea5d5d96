"""Servo identification: the twin's per-joint servo model fitted to recorded trajectories (docs/twin.md#servos).

A real user knows the SO-101's USD (links, masses, inertias) but not how their arm's servos respond: stiffness,
damping, gear friction, rotor inertia, the delay between a command and the motion, how hard the gripper can squeeze,
and how their calibration departs from the nominal lerobot-units <-> radians mapping. All of that shows in a
recording's `action` vs `observation.state`. Identification replays the recorded actions open loop in the twin's
MuJoCo model (the one Newton builds from `twin.usd`, contacts and all), and minimizes the tracking error against the
recorded joints with scipy's `least_squares` (trust-region reflective, bounded by physical priors, a weak Gaussian
prior pulling the directions the data cannot see back to the datasheet values).

Per joint j the model is MuJoCo's position servo on the joint:

    tau = clip(kp_j (u_j - q_j) - kv_j qdot_j, +-torque_j),  joint armature a_j,  friction loss f_j
    u_j(t) = cal_j(action_j(t - latency))             (the command held for one frame, `latency` frames late)
    cal_j(q) = c_j + scale_j (q - c_j) + offset_j       (c_j: the middle of the joint's range)

and the recorded state is cal_j^-1 of the arm's true angle. Each joint's tracking error depends chiefly on its own
servo, so the finite-difference Jacobian is declared block-sparse (one block per joint): a step of all 6 joints'
k-th parameter costs one replay instead of six. The optimizer still evaluates the exact, coupled cost, so this
only makes its search direction approximate. Latency is an integer number of frames: each candidate is fitted
briefly and the best one fitted to the end.

Held-out episodes are never fitted: the stage reports their per-joint RMSE / p95 / max before (the prior) and
after. The spread of per-episode refits (each training episode alone, started from the joint fit) is the
uncertainty the RL stage widens its randomization by.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.workcell.joints import LEROBOT_JOINT_NAMES, LIMITS_HI_RAD, LIMITS_LO_RAD, SIM_JOINTS, lerobot_to_sim

GRIPPER = len(SIM_JOINTS) - 1
# part of every cached fit's key: bump when what a replay computes changes (2: constants re-derived per armature)
REPLAY_VERSION = "2"
_MID_RAD = (LIMITS_LO_RAD + LIMITS_HI_RAD) / 2
#: the per-joint parameters, in the order of each joint's block of the fit vector
JOINT_PARAMETERS = ("kp", "kv", "armature", "frictionloss", "offset", "scale")
FITTABLE = (*JOINT_PARAMETERS, "gripper_torque")


class IdentifyError(ValueError):
    """The recording cannot identify the servos (too short, no motion, missing columns)."""


@dataclass
class ServoProfile:
    """One arm's servo model, SIM_JOINTS order. Gains per radian (N·m/rad, N·m·s/rad), torques N·m, armature
    kg·m², friction loss N·m, offsets radians; `latency_steps` in frames of the recording."""

    kp: np.ndarray
    kv: np.ndarray
    armature: np.ndarray
    frictionloss: np.ndarray
    torque_limit_nm: np.ndarray
    offset_rad: np.ndarray = field(default_factory=lambda: np.zeros(6))
    scale: np.ndarray = field(default_factory=lambda: np.ones(6))
    latency_steps: int = 0

    def __post_init__(self):
        for name in ("kp", "kv", "armature", "frictionloss", "torque_limit_nm", "offset_rad", "scale"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            value = np.full(6, float(value)) if value.ndim == 0 else value
            if value.shape != (6,):
                raise ValueError(f"servo profile {name}: expected 6 values ({', '.join(SIM_JOINTS)}), got {value}")
            setattr(self, name, value)
        self.latency_steps = int(self.latency_steps)

    @classmethod
    def from_prior(cls, prior) -> "ServoProfile":
        """The twin section's datasheet prior (`twin.servo_prior`)."""
        return cls(kp=prior.kp, kv=prior.kv, armature=prior.armature, frictionloss=prior.frictionloss,
                   torque_limit_nm=prior.torque_limit_nm, latency_steps=prior.latency_steps)

    def to_json(self) -> dict:
        out = {name: dict(zip(SIM_JOINTS, np.round(getattr(self, name), 6).tolist()))
               for name in ("kp", "kv", "armature", "frictionloss", "torque_limit_nm", "scale")}
        out["offset_deg"] = dict(zip(SIM_JOINTS, np.round(np.degrees(self.offset_rad), 4).tolist()))
        out["latency_steps"] = self.latency_steps
        return out

    @classmethod
    def from_json(cls, data: dict) -> "ServoProfile":
        def joints(key):
            return np.array([float(data[key][j]) for j in SIM_JOINTS])

        return cls(kp=joints("kp"), kv=joints("kv"), armature=joints("armature"),
                   frictionloss=joints("frictionloss"), torque_limit_nm=joints("torque_limit_nm"),
                   offset_rad=np.radians(joints("offset_deg")), scale=joints("scale"),
                   latency_steps=int(data.get("latency_steps", 0)))

    def to_arm(self, q_nominal: np.ndarray) -> np.ndarray:
        """Nominal radians (lerobot units through Twinloop's one mapping) -> this arm's true joint radians."""
        return _MID_RAD + self.scale * (q_nominal - _MID_RAD) + self.offset_rad

    def to_nominal(self, q_arm: np.ndarray) -> np.ndarray:
        return _MID_RAD + (q_arm - self.offset_rad - _MID_RAD) / self.scale


@dataclass
class Episode:
    """One recorded episode in nominal radians: states[t] measured before actions[t] was sent."""

    index: int
    states: np.ndarray  # [T, 6]
    actions: np.ndarray  # [T, 6]
    cube_xy: np.ndarray | None = None  # the recorded cube position at the start (sim recordings), else None


def load_episodes(root: Path) -> list[Episode]:
    """Every episode of the LeRobot dataset at `root`, as nominal joint radians."""
    from pipeline.demos.checks import DemoData

    data = DemoData.load(Path(root))
    for key in ("action", "observation.state"):
        if key not in data.frames.columns:
            raise IdentifyError(f"{root} has no {key!r}: nothing to replay")
        names = (data.meta.features.get(key) or {}).get("names") or []
        if isinstance(names, dict):  # older LeRobot layouts: {"motors": [...]}
            names = next(iter(names.values())) if len(names) == 1 else []
        names = list(names)
        if names and tuple(names) != LEROBOT_JOINT_NAMES:  # another arm, or the joints in another order
            raise IdentifyError(f"{root}: {key!r} holds the joints {names}; identifying SO-101 servos needs "
                                f"{list(LEROBOT_JOINT_NAMES)} in that order")
    has_env = "observation.environment_state" in data.frames.columns
    out = []
    for ep, group in data.episodes():
        cube = np.asarray(group["observation.environment_state"].iloc[0])[:2] if has_env else None
        states, actions = data.joints(group, "observation.state"), data.joints(group, "action")
        for key, values in (("observation.state", states), ("action", actions)):
            bad = ~np.isfinite(np.asarray(values, dtype=float)).all(axis=1)
            if bad.any():  # a damaged recording: the optimizer would chase NaN costs instead of saying so
                raise IdentifyError(f"{root}: episode {int(ep)} has non-finite {key!r} in {int(bad.sum())} frame(s) "
                                    f"(first at frame {int(np.argmax(bad))}): repair or drop that episode")
        out.append(Episode(int(ep), lerobot_to_sim(states), lerobot_to_sim(actions), cube))
    return out


def check_identifiable(episodes: list[Episode], min_frames: int, min_motion_deg: float) -> None:
    """Refuse a recording that cannot identify a servo: too few frames, or joints that never move."""
    frames = sum(len(e.states) - 1 for e in episodes)
    if frames < min_frames:
        raise IdentifyError(f"{len(episodes)} training episode(s) hold {frames} frames: identifying the servos needs "
                            f"at least {min_frames} (twin.identify.min_frames); record longer demos")
    if frames == 0:
        return
    sweep = np.degrees(np.max([np.ptp(e.states, axis=0) for e in episodes], axis=0))
    still = [j for j, s in zip(SIM_JOINTS, sweep) if s < min_motion_deg]
    if still:
        raise IdentifyError(f"joints {', '.join(still)} move less than {min_motion_deg}° in every training episode "
                            f"(sweeps {', '.join(f'{s:.1f}°' for s in sweep)}): their servos cannot be identified "
                            "from this recording")


class ReplayModel:
    """The twin's MuJoCo model (Newton's conversion of `twin.usd`), replaying episodes under a servo profile."""

    def __init__(self, twin):
        import mujoco

        from pipeline.twin.physics import make_solver

        solver = make_solver(twin)
        if not hasattr(solver, "mj_model") or solver.mj_model is None:
            raise RuntimeError("the replay steps MuJoCo's C engine: load the twin on CPU with one world")
        self.m, self.d = solver.mj_model, solver.mj_data
        self.m.opt.timestep = twin.physics_dt
        self.physics_dt = twin.physics_dt
        self.servo = servo_indices(self.m)
        self.dofs = self.m.jnt_dofadr[[self.m.actuator_trnid[a, 0] for a in self.servo["actuator"]]]
        self.joints = np.array([self.m.actuator_trnid[a, 0] for a in self.servo["actuator"]])
        self.cube = cube_free_joint(self.m, self.d, twin)
        self._solver = solver  # keeps Newton's model alive under the MuJoCo arrays
        self._mujoco = mujoco
        # what Newton derived from the authored armature: the joint-limit solref it pre-scaled by dof_invweight0
        self._invweight0 = self.m.dof_invweight0.copy()
        self._limit_solref = self.m.jnt_solref.copy()
        self._armature = self.m.dof_armature.copy()
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        """What a cached fit depends on besides the servo model: the bodies, colliders, joints and step (a new
        capture or mesh changes it; the authored servo parameters, which every replay overwrites, do not)."""
        m = self.m
        h = hashlib.md5(REPLAY_VERSION.encode())
        for a in (m.body_mass, m.body_inertia, m.body_pos, m.body_quat, m.body_ipos, m.body_iquat, m.geom_type,
                  m.geom_size, m.geom_pos, m.geom_quat, m.geom_friction, m.geom_bodyid, m.jnt_range, m.jnt_type,
                  m.qpos0, np.array([m.opt.timestep, *m.opt.gravity])):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def authored(self) -> ServoProfile:
        """The servo model the twin's USD carries (what Newton converted)."""
        a = self.servo["actuator"]
        return ServoProfile(kp=self.m.actuator_gainprm[a, 0].copy(), kv=-self.m.actuator_biasprm[a, 2].copy(),
                            armature=self.m.dof_armature[self.dofs].copy(),
                            frictionloss=self.m.dof_frictionloss[self.dofs].copy(),
                            torque_limit_nm=self.m.jnt_actfrcrange[self.joints, 1].copy())

    def apply(self, p: ServoProfile) -> None:
        m, a = self.m, self.servo["actuator"]
        m.actuator_gainprm[a, 0] = p.kp
        m.actuator_biasprm[a, 1] = -p.kp
        m.actuator_biasprm[a, 2] = -p.kv
        m.dof_armature[self.dofs] = p.armature
        m.dof_frictionloss[self.dofs] = p.frictionloss
        m.jnt_actfrclimited[self.joints] = 1
        m.jnt_actfrcrange[self.joints] = np.c_[-p.torque_limit_nm, p.torque_limit_nm]
        if not np.array_equal(m.dof_armature, self._armature):
            self._armature = m.dof_armature.copy()
            self._rederive_constants()

    def _rederive_constants(self) -> None:
        """Recompute what MuJoCo and Newton derive from the armature, as a twin authored with it would hold: MuJoCo's
        dof_invweight0 (constraint scaling, mj_setConst) and Newton's joint-limit solref, which it pre-scales by
        dof_invweight0 so that the limit's force-space stiffness and damping stay as authored (its
        update_jnt_solref_from_invweight0_kernel). Without this a replay depended on the armature the USD was
        authored with, not on the profile alone."""
        m = self.m
        self._mujoco.mj_setConst(m, self.d)
        authored = self._invweight0[m.jnt_dofadr]
        s = np.divide(m.dof_invweight0[m.jnt_dofadr], authored, out=np.ones_like(authored), where=authored > 0)
        # direct stiffness k = 1/(tc dr)^2 and damping b = 2/tc both scale by s: tc -> tc / s, dr -> dr sqrt(s)
        positive = self._limit_solref[:, 0] > 0
        solref = self._limit_solref.copy()
        solref[positive, 0] = self._limit_solref[positive, 0] / s[positive]
        solref[positive, 1] = self._limit_solref[positive, 1] * np.sqrt(s[positive])
        m.jnt_solref[:] = solref

    def replay(self, ep: Episode, p: ServoProfile, fps: float) -> np.ndarray:
        """The joints (nominal radians, as the arm would report them) after each action 0..T-2: [T-1, 6]."""
        mujoco, m, d = self._mujoco, self.m, self.d
        self.apply(p)
        substeps = max(1, int(round(1.0 / (fps * self.physics_dt))))
        mujoco.mj_resetData(m, d)
        qadr = self.servo["qpos"]
        d.qpos[qadr] = p.to_arm(ep.states[0])
        if self.cube is not None:
            adr, pose = self.cube
            d.qpos[adr:adr + 7] = pose
            if ep.cube_xy is not None:  # the recorded cube position; the twin's cube keeps its height and yaw
                d.qpos[adr:adr + 2] = ep.cube_xy
        mujoco.mj_forward(m, d)
        commands = np.clip(p.to_arm(ep.actions), LIMITS_LO_RAD, LIMITS_HI_RAD)
        if p.latency_steps:  # before the first late command arrives, the servo holds where the arm started
            commands = np.concatenate([np.repeat(p.to_arm(ep.states[:1]), p.latency_steps, 0), commands])
        out = np.empty((len(ep.states) - 1, 6))
        act = self.servo["actuator"]
        for t in range(len(ep.states) - 1):
            d.ctrl[act] = commands[t]
            mujoco.mj_step(m, d, nstep=substeps)
            out[t] = d.qpos[qadr]
        if not np.all(np.isfinite(out)):
            raise RuntimeError(f"episode {ep.index}: the twin diverged during the replay")
        return p.to_nominal(out)


def servo_indices(m) -> dict[str, np.ndarray]:
    """qpos addresses of the SO-101 joints and the position servos (PD actuators) driving them, SIM_JOINTS order."""
    import mujoco

    qpos, actuators = [], []
    for name in SIM_JOINTS:
        joint = next((j for j in range(m.njnt)
                      if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) or "").endswith(f"joints_{name}")), None)
        if joint is None:
            raise RuntimeError(f"the twin's MuJoCo model has no joint {name!r}")
        act = next((a for a in range(m.nu) if m.actuator_trnid[a, 0] == joint and m.actuator_gainprm[a, 0] > 0),
                   None)
        if act is None:
            raise RuntimeError(f"the twin has no position servo on joint {name!r} (no drive stiffness authored?)")
        qpos.append(m.jnt_qposadr[joint])
        actuators.append(act)
    return {"qpos": np.array(qpos), "actuator": np.array(actuators)}


def cube_free_joint(m, d, twin) -> tuple[int, np.ndarray] | None:
    """(qpos address, authored pose) of the cube's free joint, when the twin has a rigid `cube`."""
    import mujoco

    if "cube" not in twin.object_bodies:
        return None
    free = [j for j in range(m.njnt) if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
    if len(free) != len(twin.object_bodies):
        return None
    body_names = sorted(twin.object_bodies, key=twin.object_bodies.get)
    adr = m.jnt_qposadr[free[body_names.index("cube")]]
    mujoco.mj_resetData(m, d)
    return adr, d.qpos[adr:adr + 7].copy()


# --- the fit -------------------------------------------------------------------------------------------------------

class _Packing:
    """Profile <-> the optimizer's vector: log of the positive parameters, offsets in degrees, scales as they are."""

    def __init__(self, fit: tuple[str, ...], prior: ServoProfile, cfg):
        unknown = set(fit) - set(FITTABLE)
        if unknown:
            raise ValueError(f"twin.identify.fit: unknown parameters {sorted(unknown)} (choose from {FITTABLE})")
        self.prior, self.cfg = prior, cfg
        self.slots: list[tuple[str, int]] = [(name, j) for j in range(6) for name in JOINT_PARAMETERS if name in fit]
        if "gripper_torque" in fit:
            self.slots.append(("gripper_torque", GRIPPER))

    def _value(self, p: ServoProfile, name: str, j: int) -> float:
        if name == "offset":
            return float(np.degrees(p.offset_rad[j]))
        if name == "scale":
            return float(p.scale[j])
        if name == "gripper_torque":
            return float(np.log(p.torque_limit_nm[j]))
        return float(np.log(getattr(p, name)[j]))

    def pack(self, p: ServoProfile) -> np.ndarray:
        return np.array([self._value(p, name, j) for name, j in self.slots])

    def unpack(self, x: np.ndarray, latency: int) -> ServoProfile:
        p = self.prior
        values = {k: getattr(p, k).copy() for k in ("kp", "kv", "armature", "frictionloss", "torque_limit_nm",
                                                      "offset_rad", "scale")}
        for (name, j), v in zip(self.slots, x):
            if name == "offset":
                values["offset_rad"][j] = np.radians(v)
            elif name == "scale":
                values["scale"][j] = v
            elif name == "gripper_torque":
                values["torque_limit_nm"][j] = np.exp(v)
            else:
                values[name][j] = np.exp(v)
        return ServoProfile(**values, latency_steps=latency)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c, p = self.cfg, self.prior
        lo, hi = [], []
        for name, j in self.slots:
            if name in ("kp", "kv"):
                v = np.log(getattr(p, name)[j])
                lo.append(v - np.log(c.gain_range_factor))
                hi.append(v + np.log(c.gain_range_factor))
            elif name == "armature":
                lo.append(np.log(c.armature_range.low))
                hi.append(np.log(c.armature_range.high))
            elif name == "frictionloss":
                lo.append(np.log(c.frictionloss_range.low))
                hi.append(np.log(c.frictionloss_range.high))
            elif name == "offset":
                lo.append(-c.max_offset_deg)
                hi.append(c.max_offset_deg)
            elif name == "scale":
                lo.append(1 - c.max_scale_error)
                hi.append(1 + c.max_scale_error)
            else:
                lo.append(np.log(c.gripper_torque_range.low))
                hi.append(np.log(c.gripper_torque_range.high))
        return np.array(lo), np.array(hi)

    def prior_sigma(self) -> np.ndarray:
        """The prior's width per slot (log units for the positive parameters): half the bounds' span."""
        lo, hi = self.bounds()
        return (hi - lo) / 2

    def sparsity(self, frames: int) -> np.ndarray:
        """Which slots each residual depends on (chiefly): joint j's tracking error on joint j's parameters."""
        n = len(self.slots)
        rows = np.zeros((6 * frames + n, n), dtype=bool)
        owner = np.array([j for _, j in self.slots])
        for j in range(6):
            rows[j * frames:(j + 1) * frames, owner == j] = True
        rows[6 * frames:, :] = np.eye(n, dtype=bool)
        return rows


@dataclass
class FitResult:
    profile: ServoProfile
    cost_by_latency: dict[int, float]
    evaluations: int
    train_rmse_deg: float
    episode_profiles: list[ServoProfile]
    spread: dict  # parameter -> per-joint relative std across episode refits; latency_steps: the episodes' range
    calibration_at_prior: list[str] = field(default_factory=list)  # "<offset|scale> <joint>" the fit gave back


def tracking_error(model: ReplayModel, episodes: list[Episode], p: ServoProfile, fps: float) -> np.ndarray:
    """Replayed minus recorded joints, degrees, [frames, 6] over the episodes."""
    return np.concatenate([np.degrees(model.replay(e, p, fps) - e.states[1:]) for e in episodes])


def identify(model: ReplayModel, train: list[Episode], prior: ServoProfile, cfg, fps: float,
             log: Callable[[str], None] = print, cache_dir: Path | None = None, progress: bool = True) -> FitResult:
    """Fit `cfg.fit` parameters of the servo model (and the latency, 0..cfg.max_latency_steps) to `train`.

    `cache_dir` makes the fit resumable: each finished piece (a latency's short fit, the final fit, an episode's
    refit) is saved there under a key of its inputs and reused when the same fit runs again."""
    from scipy.optimize import least_squares
    from tqdm import tqdm

    check_identifiable(train, cfg.min_frames, cfg.min_motion_deg)
    packing = _Packing(tuple(cfg.fit), prior, cfg)
    lo, hi = packing.bounds()
    x_prior = np.clip(packing.pack(prior), lo, hi)
    sigma = packing.prior_sigma()
    frames = sum(len(e.states) - 1 for e in train)
    evaluations = 0
    bar = tqdm(desc="identify servos", unit="replay", disable=not progress, leave=False)

    def residuals(x, latency, episodes):
        nonlocal evaluations
        evaluations += 1
        bar.update(1)
        err = tracking_error(model, episodes, packing.unpack(x, latency), fps) / cfg.noise_deg
        # joint-major, as _Packing.sparsity lays the rows out; the prior keeps unobservable directions home
        return np.concatenate([err.T.reshape(-1), cfg.prior_weight * (x - x_prior) / sigma])

    def fit(x0, latency, episodes, max_nfev, tag):
        key = _cache_key(tag, latency, episodes, x0, packing, cfg, model)
        cached = _cache_read(cache_dir, key)
        if cached is not None:
            return np.asarray(cached["x"]), float(cached["cost"])
        n = sum(len(e.states) - 1 for e in episodes)
        res = least_squares(residuals, x0, bounds=(lo, hi), args=(latency, episodes), method="trf",
                            loss=cfg.loss, f_scale=cfg.loss_scale_deg / cfg.noise_deg, x_scale="jac",
                            jac_sparsity=packing.sparsity(n), max_nfev=max_nfev, diff_step=3e-3)
        _cache_write(cache_dir, key, {"x": res.x.tolist(), "cost": float(res.cost)})
        return res.x, float(res.cost)

    try:
        candidates = {}
        for latency in range(cfg.max_latency_steps + 1):
            candidates[latency] = fit(x_prior, latency, train, cfg.latency_scan_evaluations, "scan")
            log(f"  latency {latency} frame(s): cost {candidates[latency][1]:.1f} after a short fit")
        latency = min(candidates, key=lambda k: candidates[k][1])
        # each training episode's own best latency (under each candidate's short fit): how sure the choice is
        per_episode_latency = [latency] if len(candidates) == 1 else [
            min(candidates, key=lambda k: _rms(tracking_error(model, [e], packing.unpack(candidates[k][0], k), fps)))
            for e in train]
        x, cost = fit(candidates[latency][0], latency, train, cfg.max_evaluations, "final")
        x, restored = restore_unobserved_calibration(model, train, packing, x, x_prior, latency, fps,
                                                     cfg.calibration_min_gain)
        if restored:
            log(f"  calibration the training episodes do not observe, kept at the prior: {', '.join(restored)}")
        profile = packing.unpack(x, latency)
        episode_profiles = []
        if len(train) > 1:
            for e in train:
                xe, _ = fit(x, latency, [e], cfg.episode_refit_evaluations, "episode")
                episode_profiles.append(packing.unpack(xe, latency))
    finally:
        bar.close()
    err = tracking_error(model, train, profile, fps)
    spread = profile_spread(profile, episode_profiles)
    spread["latency_steps"] = {"min": int(min(per_episode_latency)), "max": int(max(per_episode_latency)),
                               "per_episode": [int(k) for k in per_episode_latency]}
    return FitResult(profile=profile, cost_by_latency={k: v[1] for k, v in candidates.items()},
                     evaluations=evaluations, train_rmse_deg=_rms(err), episode_profiles=episode_profiles,
                     spread=spread, calibration_at_prior=restored)


def restore_unobserved_calibration(model: ReplayModel, train: list[Episode], packing: "_Packing", x: np.ndarray,
                                   x_prior: np.ndarray, latency: int, fps: float, min_gain: float
                                   ) -> tuple[np.ndarray, list[str]]:
    """Put back the prior's value of each fitted calibration offset / scale that the training episodes do not pay for.

    The calibration maps commands and encoder readings alike, so an offset or a scale changes a replay only through
    gravity, inertia and contacts at the shifted pose: weakly observed, it can drift where the training cost is flat
    and then misplace the arm on other motions (the real SO-101 recording: zeroing the fitted offsets moved the
    training RMSE from 1.254 to 1.253 deg and the held-out episode's from 2.38 to 1.05 deg). One at a time, offsets
    first, each is restored when the training RMSE with it restored (and the ones before) stays within
    (1 + min_gain) x the fitted one. Returns the vector and the restored "<parameter> <joint>" names."""
    fitted = _rms(tracking_error(model, train, packing.unpack(x, latency), fps))
    budget = fitted * (1 + min_gain)
    x = x.copy()
    restored = []
    for kind in ("offset", "scale"):
        for i, (name, j) in enumerate(packing.slots):
            if name != kind or x[i] == x_prior[i]:
                continue
            trial = x.copy()
            trial[i] = x_prior[i]
            if _rms(tracking_error(model, train, packing.unpack(trial, latency), fps)) <= budget:
                x = trial
                restored.append(f"{name} {SIM_JOINTS[j]}")
    return x, restored


def _rms(err: np.ndarray) -> float:
    """Mean over joints of the per-joint RMSE."""
    return float(np.sqrt((err ** 2).mean(0)).mean())


def profile_spread(profile: ServoProfile, episode_profiles: list[ServoProfile]) -> dict:
    """Relative standard deviation across per-episode refits, per parameter and joint (0 with < 2 episodes)."""
    out = {}
    for name in ("kp", "kv", "armature", "frictionloss", "torque_limit_nm", "scale"):
        if len(episode_profiles) < 2:
            out[name] = dict.fromkeys(SIM_JOINTS, 0.0)
            continue
        values = np.array([getattr(p, name) for p in episode_profiles])
        rel = values.std(0) / np.maximum(np.abs(getattr(profile, name)), 1e-12)
        out[name] = dict(zip(SIM_JOINTS, np.round(rel, 4).tolist()))
    offsets = np.array([np.degrees(p.offset_rad) for p in episode_profiles]) if episode_profiles else np.zeros((1, 6))
    out["offset_deg"] = dict(zip(SIM_JOINTS, np.round(offsets.std(0), 4).tolist()))
    return out


def _cache_key(tag, latency, episodes, x0, packing, cfg, model: "ReplayModel") -> str:
    """Everything a fit's result depends on: the replay code's version and the twin (model.fingerprint), the
    episodes' data, the start, the prior, the settings."""
    h = hashlib.md5()
    h.update(json.dumps([tag, latency, [e.index for e in episodes], np.round(x0, 9).tolist(), packing.slots,
                         cfg.model_dump(mode="json"), packing.prior.to_json(), model.fingerprint],
                        default=str).encode())
    for e in episodes:
        h.update(np.ascontiguousarray(e.states).tobytes())
        h.update(np.ascontiguousarray(e.actions).tobytes())
        h.update(b"" if e.cube_xy is None else np.ascontiguousarray(e.cube_xy, dtype=float).tobytes())
    return h.hexdigest()


def _cache_read(cache_dir: Path | None, key: str) -> dict | None:
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # a fit interrupted mid-write: redo it
        return None


def _cache_write(cache_dir: Path | None, key: str, value: dict) -> None:
    if cache_dir is None:
        return
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(cache_dir) / f"{key}.tmp"
    tmp.write_text(json.dumps(value))
    tmp.replace(Path(cache_dir) / f"{key}.json")


def error_summary(err: np.ndarray) -> dict:
    """Per-joint RMSE / p95 / max of tracking errors [frames, 6] (degrees), and the mean RMSE over joints."""
    rmse = np.sqrt((err ** 2).mean(0))
    return {"frames": int(len(err)),
            "rmse_deg": dict(zip(SIM_JOINTS, rmse.round(3).tolist())),
            "p95_deg": dict(zip(SIM_JOINTS, np.percentile(np.abs(err), 95, axis=0).round(3).tolist())),
            "max_deg": dict(zip(SIM_JOINTS, np.abs(err).max(0).round(3).tolist())),
            "mean_rmse_deg": round(float(rmse.mean()), 4)}


def split_episodes(episodes: list[Episode], heldout: int, train: int, seed: int) -> tuple[list, list]:
    """A seeded split: `heldout` episodes set aside (never fitted), up to `train` (0: the rest) to fit on."""
    if heldout >= len(episodes):
        raise IdentifyError(f"{len(episodes)} episode(s): holding out {heldout} leaves nothing to fit on "
                            "(twin.identify.heldout_episodes)")
    order = np.random.default_rng(seed).permutation(len(episodes))
    held = sorted(order[:heldout])
    rest = sorted(order[heldout:])
    if train:
        rest = rest[:train]
    return [episodes[i] for i in rest], [episodes[i] for i in held]
