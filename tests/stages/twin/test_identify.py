"""Servo identification (pipeline/twin/identify.py) and the information barrier around the stand-in robot."""

import json

import numpy as np
import pytest

from pipeline.workcell.joints import SIM_JOINTS


@pytest.fixture(scope="module")
def replay_model(synthetic_twin):
    from pipeline.twin.identify import ReplayModel
    from pipeline.twin.physics import load_twin

    return ReplayModel(load_twin(synthetic_twin["path"]))


def _commands(seconds: float, fps: int, seed: int) -> np.ndarray:
    """Smooth joint commands around the home pose: a few sines per joint, within the joint limits."""
    from isaaclab_so101.constants import HOME_JOINT_POS

    from pipeline.workcell.joints import LIMITS_HI_RAD, LIMITS_LO_RAD

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fps))[:, None] / fps
    home = np.array([HOME_JOINT_POS[j] for j in SIM_JOINTS])
    amp = np.radians([25, 20, 20, 25, 30, 15])
    q = home + sum(amp / 2 * np.sin(2 * np.pi * rng.uniform(0.2, 0.9, 6) * t + rng.uniform(0, 6.3, 6))
                   for _ in range(2))
    return np.clip(q, LIMITS_LO_RAD + 0.05, LIMITS_HI_RAD - 0.05)


def _recording(model, truth, seconds=6.0, fps=30, episodes=2):
    """Episodes "recorded" on an arm whose servos are `truth`: its states are the twin's replay under truth."""
    from pipeline.twin.identify import Episode

    out = []
    for k in range(episodes):
        actions = _commands(seconds, fps, seed=k)
        ep = Episode(k, np.repeat(actions[:1], len(actions), 0), actions)
        ep.states = np.concatenate([actions[:1], model.replay(ep, truth, fps)])
        out.append(ep)
    return out


def _prior(recipe):
    from pipeline.twin.identify import ServoProfile

    return ServoProfile.from_prior(recipe.twin.servo_prior)


def test_identification_recovers_known_gains_and_latency(replay_model, recipe):
    """An arm 1.6x stiffer and 0.7x as damped as the prior, one frame late: the fit finds its kp and kv within 10 %
    and the latency exactly. Armature and friction loss stay at their true values here: on a joint gravity does not
    load (shoulder_pan, wrist_roll) only kp / (link inertia + armature) shows in position data."""
    from dataclasses import replace

    from pipeline.twin.identify import identify, tracking_error

    prior = _prior(recipe)
    truth = replace(prior, kp=prior.kp * 1.6, kv=prior.kv * 0.7, latency_steps=1)
    train = _recording(replay_model, truth)
    cfg = recipe.twin.identify.model_copy(update={
        "fit": ("kp", "kv"), "max_latency_steps": 2, "latency_scan_evaluations": 8, "max_evaluations": 10,
        "episode_refit_evaluations": 1, "loss": "linear", "min_frames": 100})
    result = identify(replay_model, train, prior, cfg, fps=30, log=lambda m: None, progress=False)
    assert result.profile.latency_steps == 1
    np.testing.assert_allclose(result.profile.kp, truth.kp, rtol=0.10)
    np.testing.assert_allclose(result.profile.kv, truth.kv, rtol=0.10)
    before = np.abs(tracking_error(replay_model, train, prior, 30)).mean()
    after = np.abs(tracking_error(replay_model, train, result.profile, 30)).mean()
    assert after < 0.2 * before
    assert set(result.spread["kp"]) == set(SIM_JOINTS) and len(result.episode_profiles) == 2


def test_a_recording_too_short_to_identify_is_refused(replay_model, recipe):
    from pipeline.twin.identify import IdentifyError, identify

    prior = _prior(recipe)
    short = _recording(replay_model, prior, seconds=1.0, episodes=1)  # 29 frames
    with pytest.raises(IdentifyError, match=r"29 frames.*at least 150"):
        identify(replay_model, short, prior, recipe.twin.identify, fps=30, log=lambda m: None, progress=False)


def test_a_joint_that_never_moves_cannot_be_identified(replay_model, recipe):
    from pipeline.twin.identify import IdentifyError, check_identifiable

    episodes = _recording(replay_model, _prior(recipe), episodes=1)
    episodes[0].states[:, 4] = episodes[0].states[0, 4]  # wrist_roll held still
    with pytest.raises(IdentifyError, match="Wrist_Roll move less than"):
        check_identifiable(episodes, 100, 3.0)


def test_holding_out_every_episode_is_refused(recipe):
    from pipeline.twin.identify import IdentifyError, split_episodes

    with pytest.raises(IdentifyError, match="leaves nothing to fit"):
        split_episodes([object(), object()], heldout=2, train=0, seed=0)


def test_the_twin_drives_carry_a_written_profile(synthetic_twin, recipe, tmp_path):
    """A profile written into twin.usd comes back out of Newton's MuJoCo conversion unchanged (drives per degree
    in USD, per radian in the servo model), with its latency and calibration in the layer's metadata."""
    import shutil
    from dataclasses import replace

    from pxr import Usd

    from pipeline.twin.author import read_servo, write_servo
    from pipeline.twin.identify import ReplayModel, ServoProfile
    from pipeline.twin.physics import load_twin

    twin_dir = tmp_path / "twin"
    shutil.copytree(synthetic_twin["path"].parent, twin_dir)
    prior = _prior(recipe)
    profile = replace(prior, kp=prior.kp * [1.1, 0.9, 1.3, 0.7, 1.2, 0.8], kv=prior.kv * 1.5,
                      armature=np.linspace(0.002, 0.02, 6), frictionloss=np.linspace(0.01, 0.1, 6),
                      torque_limit_nm=np.r_[[2.94] * 5, 0.8], offset_rad=np.radians([0, 1, -1, 0, 0, 2]),
                      latency_steps=2)
    stage = Usd.Stage.Open(str(twin_dir / "twin.usd"))
    write_servo(stage, profile, "identified", {"spread": {"kp": dict.fromkeys(SIM_JOINTS, 0.05)}})
    stage.GetRootLayer().Save()
    back = ReplayModel(load_twin(twin_dir / "twin.usd")).authored()
    for name in ("kp", "kv", "armature", "frictionloss", "torque_limit_nm"):
        np.testing.assert_allclose(getattr(back, name), getattr(profile, name), rtol=1e-5, err_msg=name)
    record = read_servo(twin_dir / "twin.usd")
    assert record["source"] == "identified" and record["fit"]["spread"]["kp"]["Pitch"] == 0.05
    again = ServoProfile.from_json(record["profile"])
    assert again.latency_steps == 2
    np.testing.assert_allclose(again.offset_rad, profile.offset_rad, atol=1e-6)


def test_a_replay_depends_on_the_profile_not_on_the_armature_the_twin_was_authored_with(synthetic_twin, recipe,
                                                                                       tmp_path):
    """Newton derives constraint constants from the authored armature (MuJoCo's dof_invweight0, the joint-limit
    solref it pre-scales by it): the replay re-derives them, so one profile replays the same on a twin authored with
    the prior and on one authored with other values (found when the identification ran on the prior-authored twin
    and the identified twin then moved otherwise)."""
    import shutil
    from dataclasses import replace

    from pxr import Usd

    from pipeline.twin.author import write_servo
    from pipeline.twin.identify import ReplayModel
    from pipeline.twin.physics import load_twin

    prior = _prior(recipe)
    other = tmp_path / "twin"
    shutil.copytree(synthetic_twin["path"].parent, other)
    stage = Usd.Stage.Open(str(other / "twin.usd"))
    write_servo(stage, replace(prior, armature=prior.armature * 4, kp=prior.kp * 0.6), "identified")
    stage.GetRootLayer().Save()
    a, b = ReplayModel(load_twin(synthetic_twin["path"])), ReplayModel(load_twin(other / "twin.usd"))
    assert not np.allclose(a.m.dof_invweight0, b.m.dof_invweight0)  # Newton built the two differently
    profile = replace(prior, armature=prior.armature * 2, frictionloss=prior.frictionloss * 3)
    [ep] = _recording(a, prior, seconds=3.0, episodes=1)
    np.testing.assert_allclose(a.replay(ep, profile, 30), b.replay(ep, profile, 30), atol=1e-7)
    np.testing.assert_allclose(a.m.dof_invweight0, b.m.dof_invweight0, rtol=1e-6)
    np.testing.assert_allclose(a.m.jnt_solref, b.m.jnt_solref, rtol=1e-5)
    assert a.fingerprint == b.fingerprint  # the servo authoring is not part of what a cached fit depends on


def test_an_interrupted_fit_resumes_from_its_cache_and_new_data_refits(replay_model, recipe, tmp_path):
    """A finished fit is reused (no replay), with the same profile; the same episode indices with other cube
    positions, or another prior, fit again."""
    from dataclasses import replace

    from pipeline.twin.identify import identify

    prior = _prior(recipe)
    cfg = recipe.twin.identify.model_copy(update={"max_latency_steps": 0, "latency_scan_evaluations": 2,
                                                  "max_evaluations": 2, "episode_refit_evaluations": 1})
    episodes = _recording(replay_model, replace(prior, kp=prior.kp * 1.3), seconds=4.0, episodes=2)

    def run(eps, p):
        return identify(replay_model, eps, p, cfg, fps=30, log=lambda m: None, progress=False, cache_dir=tmp_path)

    first = run(episodes, prior)
    again = run(episodes, prior)
    assert first.evaluations > 0 and again.evaluations == 0
    np.testing.assert_array_equal(first.profile.kp, again.profile.kp)
    moved = [replace(e, cube_xy=np.array([0.2, 0.01])) for e in episodes]
    assert run(moved, prior).evaluations > 0
    assert run(episodes, replace(prior, frictionloss=prior.frictionloss * 2)).evaluations > 0


def test_the_twin_does_not_read_the_stand_in_robots_hidden_physics(twin_inputs, synthetic_twin, recipe, tmp_path):
    """Information barrier: a stand-in robot with other servos, another cube mass and other frictions authors the
    very same twin.usd from the same capture, mesh and splat — its physics reaches the twin only through the demos
    it records (which identification reads)."""
    from pipeline.twin.author import author_twin
    from pipeline.twin.stage import workcell_given
    from pipeline.workcell.build import official_robot_usd

    cell = recipe.workcell
    hidden = cell.model_copy(update={
        "servo": cell.servo.model_copy(update={"kp": tuple(2 * k for k in cell.servo.kp), "armature": 0.02,
                                               "frictionloss": 0.2, "torque_limit_nm": (1.0,) * 6}),
        "cube": cell.cube.model_copy(update={"mass": 0.05, "friction": 0.6}),
        "table": cell.table.model_copy(update={"friction": 0.3}),
        "gripper_friction": 2.5})
    other = recipe.model_copy(update={"workcell": hidden})
    assert workcell_given(other) == workcell_given(recipe)
    path = author_twin(other, tmp_path / "twin", twin_inputs["scene"], twin_inputs["mesh_dir"],
                       synthetic_twin["parts"], twin_inputs["capture"], official_robot_usd(),
                       {"models/mesh/scene.json": "abc123"})
    assert path.read_bytes() == synthetic_twin["path"].read_bytes()
    # and the stand-in robot's cameras, which a real cell calibrates, do reach it
    moved = recipe.model_copy(update={"workcell": cell.model_copy(update={"cameras": cell.cameras.model_copy(
        update={"front": cell.cameras.front.model_copy(update={"fovy_deg": 40.0})})})})
    assert workcell_given(moved) != workcell_given(recipe)


def test_rl_randomization_is_widened_by_the_identifications_spread(synthetic_twin, recipe, tmp_path):
    """rl.randomization's servo ranges (null) come from the twin's fit: gains 1 +- sigmas x the kp/kv spread,
    latency over the episodes' best latencies; the twin's own prior has no spread to randomize by."""
    import shutil
    from dataclasses import replace

    from pxr import Usd

    from pipeline.rl.env_cfg import RlError, resolve_randomization, twin_latency_steps
    from pipeline.twin.author import write_servo

    r = recipe.rl.randomization
    assert r.joint_gain_scale is None and r.action_latency_steps is None
    with pytest.raises(RlError, match="not identified"):
        resolve_randomization(r, synthetic_twin["path"])
    twin_dir = tmp_path / "twin"
    shutil.copytree(synthetic_twin["path"].parent, twin_dir)
    stage = Usd.Stage.Open(str(twin_dir / "twin.usd"))
    spread = {"kp": dict.fromkeys(SIM_JOINTS, 0.04), "kv": dict.fromkeys(SIM_JOINTS, 0.06),
              "latency_steps": {"min": 1, "max": 2, "per_episode": [1, 1, 2, 1]}}
    write_servo(stage, replace(_prior(recipe), latency_steps=1), "identified", {"spread": spread})
    stage.GetRootLayer().Save()
    resolved = resolve_randomization(r, twin_dir / "twin.usd")
    w = r.uncertainty_sigmas * 0.05
    assert (resolved.joint_gain_scale.low, resolved.joint_gain_scale.high) == pytest.approx((1 - w, 1 + w))
    assert resolved.action_latency_steps == (0, 3)  # 1..2, widened by 2 x 0.43 frames
    assert twin_latency_steps(twin_dir / "twin.usd") == 1
    from pipeline.common.sections import Range

    fixed = r.model_copy(update={"joint_gain_scale": Range(low=0.9, high=1.1), "action_latency_steps": (0, 1)})
    assert resolve_randomization(fixed, synthetic_twin["path"]) is fixed


def test_a_damaged_or_foreign_recording_is_refused_by_name(recorded, tmp_path):
    """NaN joints (a damaged file) and another arm's joint names are refused naming the episode or the joints, and
    the recording is left as it was."""
    import shutil

    import pandas as pd

    from pipeline.twin.identify import IdentifyError, load_episodes

    assert len(load_episodes(recorded)) == 2
    damaged = shutil.copytree(recorded, tmp_path / "damaged")
    [parquet] = sorted((damaged / "data").rglob("*.parquet"))[:1]
    frames = pd.read_parquet(parquet)
    row = int(np.flatnonzero(frames["episode_index"].to_numpy() == 1)[5])
    frames.at[row, "observation.state"] = np.full(6, np.nan, dtype=np.float32)
    frames.to_parquet(parquet)
    before = parquet.read_bytes()
    with pytest.raises(IdentifyError, match=r"episode 1 has non-finite 'observation.state' in 1 frame"):
        load_episodes(damaged)
    assert parquet.read_bytes() == before

    foreign = shutil.copytree(recorded, tmp_path / "foreign")
    info_path = foreign / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["features"]["action"]["names"] = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(IdentifyError, match=r"'action' holds the joints \['joint_1'.*needs \['shoulder_pan.pos'"):
        load_episodes(foreign)
