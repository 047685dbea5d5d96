"""The `eval_report` stage: the two policies, the twin as a lerobot robot, the paired loop and report,
and the real-arm path (lerobot's so101_follower over a stand-in motor bus; refusals when the port is absent)."""

import csv
import json
import math

import numpy as np
import pytest

from tests_helpers import PRIOR_TWIN_SERVO_RANGES, ROOT


def _with_servo_ranges(randomization):
    """rl.randomization with PRIOR_TWIN_SERVO_RANGES filled in (what resolve_randomization gives an identified twin)."""
    return randomization.model_validate({**randomization.model_dump(), **PRIOR_TWIN_SERVO_RANGES})


# --- policies -----------------------------------------------------------------------------------------------------
def _actor(kind: str, value: float = 0.0):
    import torch

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.value = value

        def forward(self, obs):
            return obs[:, :6] * 0 + self.value

    class FromPrevious(torch.nn.Module):  # reads the previous residual: where the env puts it (obs 12:18)
        def __init__(self):
            super().__init__()
            self.value = value

        def forward(self, obs):
            return obs[:, 12:18] + self.value

    return torch.jit.script(Constant() if kind == "constant" else FromPrevious())


def _rl_dir(path, bc_dir, actor, alpha=5.0, clip=1.0):
    from pipeline.common.artifacts import file_md5

    path.mkdir(parents=True, exist_ok=True)
    actor.save(str(path / "residual_actor.pt"))
    (path / "policy_manifest.json").write_text(json.dumps({
        "kind": "bc+residual", "bc_model_md5": file_md5(bc_dir / "pretrained_model" / "model.safetensors"),
        "residual_actor": "residual_actor.pt", "alpha": alpha, "residual_clip": clip}))
    return path


def _frames(count=5):
    rng = np.random.default_rng(0)
    return [{"observation.state": rng.uniform(-30, 30, 6).astype(np.float32),
             "observation.environment_state": np.array([0.2, 0.0, 0.0125, 1, 0, 0, 0], np.float32)}
            for _ in range(count)]


def test_residual_policy_is_bc_plus_alpha_clipped_residual(tmp_path, tiny_bc):
    from pipeline.eval.policies import BCPolicy, PolicyError, ResidualPolicy

    bc_dir = tiny_bc[0]
    ckpt = bc_dir / "pretrained_model"
    bc = BCPolicy(ckpt)
    zero = ResidualPolicy(_rl_dir(tmp_path / "zero", bc_dir, _actor("constant", 0.0)), ckpt)
    growing = ResidualPolicy(_rl_dir(tmp_path / "grow", bc_dir, _actor("previous", 0.4)), ckpt)
    for p in (bc, zero, growing):
        p.reset()
    for t, frame in enumerate(_frames()):
        b, z, g = bc.act(frame), zero.act(frame), growing.act(frame)
        np.testing.assert_array_equal(z.action, b.action)  # a zero residual is exactly BC
        expected = min(0.4 * (t + 1), 1.0)  # previous residual + 0.4, clipped at residual_clip
        np.testing.assert_allclose(g.residual, expected, atol=1e-6)
        np.testing.assert_allclose(g.action, b.action + 5.0 * expected, atol=1e-4)
    with pytest.raises(PolicyError, match="trained on the BC checkpoint"):
        manifest = json.loads((tmp_path / "zero" / "policy_manifest.json").read_text())
        manifest["bc_model_md5"] = "0" * 32
        (tmp_path / "zero" / "policy_manifest.json").write_text(json.dumps(manifest))
        ResidualPolicy(tmp_path / "zero", ckpt)
    with pytest.raises(PolicyError, match="materialize `rl_policy`"):
        ResidualPolicy(tmp_path / "absent", ckpt)


# --- the twin as a robot, the paired loop, the report -------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_robot(synthetic_twin, recipe):
    from pipeline.eval.robots import TwinRobot, TwinRobotConfig

    robot = TwinRobot(TwinRobotConfig(id="test", twin_usd=synthetic_twin["path"], fps=30,
                                      physics_dt_s=recipe.rl.physics_dt_s))
    robot.connect()
    yield robot
    robot.disconnect()


def test_twin_robot_places_conditions_and_replays_them_identically(twin_robot, recipe, tiny_bc):
    from pipeline.eval.loop import run_episode
    from pipeline.eval.policies import BCPolicy
    from pipeline.eval.robots import draw_condition

    # the servo ranges as rl resolves them from an identified twin (the synthetic twin carries the prior)
    ranges = _with_servo_ranges(recipe.rl.randomization)
    with pytest.raises(ValueError, match="resolve_randomization"):
        draw_condition(0, 11, recipe.workcell, recipe.rl.randomization)
    a = draw_condition(0, 11, recipe.workcell, ranges)
    b = draw_condition(1, 12, recipe.workcell, ranges)
    assert a != b and a == draw_condition(0, 11, recipe.workcell, ranges)
    assert 0.85 <= a.gain_scale <= 1.15 and 0.8 <= a.mass_scale <= 1.25 and a.latency_steps in (0, 1)
    twin_robot.start_episode(a)
    obs = twin_robot.get_observation()
    assert (obs["cube_x"], obs["cube_y"]) == pytest.approx(a.cube_xy, abs=1e-9)
    assert math.degrees(2 * math.atan2(obs["cube_qz"], obs["cube_qw"])) == pytest.approx(a.cube_yaw_deg, abs=1e-6)
    policy = BCPolicy(tiny_bc[0] / "pretrained_model")
    runs = []
    for _ in range(2):  # the same condition twice: the same rollout (what makes the pairs fair)
        twin_robot.start_episode(a)
        runs.append(run_episode(twin_robot, policy, a, 0, fps=30, max_steps=12, keyframes=False))
    assert runs[0].steps == 12 and runs[0].outcome in ("no_grasp", "dropped", "misplaced", "timeout", "success")
    for f0, f1 in zip(runs[0].frames, runs[1].frames):
        np.testing.assert_array_equal(f0["action"], f1["action"])
        np.testing.assert_array_equal(f0["observation.state"], f1["observation.state"])
    # commands outside the joint ranges are clipped to them (joint limits always on)
    sent = twin_robot.send_action({k: 500.0 for k in twin_robot.action_features})
    assert max(sent.values()) == 100.0


def test_twin_outcome_classes_from_simulator_state(twin_robot, recipe):
    from pipeline.eval.robots import Condition

    cond = Condition(0, 0, (0.22, 0.05), 0.0)
    twin_robot.start_episode(cond)
    assert twin_robot.outcome() == "no_grasp"  # never lifted
    twin_robot.max_lift = 0.05  # lifted, then let go far from the bin
    twin_robot.released_at = np.array([0.3, -0.1])
    assert twin_robot.outcome() == "dropped"
    twin_robot.released_at = twin_robot.bin_centre[:2] + np.array([twin_robot.bin_half[0] + 0.01, 0.0])
    assert twin_robot.outcome() == "misplaced"  # let go at the bin's edge
    # the cube resting inside the bin, released, for success_hold_steps control steps: success
    centre = twin_robot.bin_centre
    twin_robot.start_episode(Condition(1, 1, (float(centre[0]), float(centre[1])), 0.0))
    twin_robot.d.qpos[twin_robot.cube_adr + 2] = centre[2] + 0.0125 + 0.004
    hold = {k: v for k, v in twin_robot.get_observation().items() if k.endswith(".pos")}
    for _ in range(recipe.rl.success_hold_steps + 5):
        twin_robot.send_action(hold)
    assert twin_robot.in_bin() and twin_robot.succeeded and twin_robot.outcome() == "success"


@pytest.fixture(scope="module")
def twin_report(tmp_path_factory, recipe, synthetic_twin, tiny_bc):
    """A 3-pair twin evaluation of BC vs BC + a constant 0.3 residual, in a project with a one-stage dvc.lock."""
    from pipeline.eval.stage import build_eval_report

    tmp = tmp_path_factory.mktemp("eval")
    rl = _rl_dir(tmp / "rl", tiny_bc[0], _actor("constant", 0.3))
    root = tmp / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text("stages:\n  usd_twin: {cmd: x, outs: [models/twin]}\n"
                                   "  eval_report: {cmd: y, deps: [models/twin], outs: [reports/eval]}\n")
    (root / "dvc.lock").write_text("schema: '2.0'\nstages:\n  usd_twin:\n    cmd: twinloop run usd_twin\n"
                                   "    outs:\n    - path: models/twin\n      md5: 0123456789abcdef0123456789abcdef.dir\n"
                                   "      nfiles: 3\n")
    ranges = _with_servo_ranges(recipe.rl.randomization)
    small = recipe.model_copy(update={
        "eval": recipe.eval.model_copy(update={"robot": "twin", "randomize": True, "pairs": 3, "episode_seconds": 0.5,
                                               "failure_examples": 2}),
        "rl": recipe.rl.model_copy(update={"randomization": ranges})})
    out = tmp / "reports" / "eval"
    metrics = build_eval_report(small, root, synthetic_twin["path"].parent, tiny_bc[0], rl, out, log=lambda m: None)
    return {"out": out, "metrics": metrics, "recipe": small, "root": root, "tmp": tmp}


def test_twin_evaluation_writes_the_report_and_rollouts(twin_report, synthetic_twin, tiny_bc):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.eval.stage import ROLLOUTS_REPO_ID, EvalError, build_eval_report

    out, metrics = twin_report["out"], twin_report["metrics"]
    assert metrics["pairs"] == 3 and metrics["robot"] == "twin"
    for name in ("bc", "bc_residual"):
        s = metrics["policies"][name]
        assert s["episodes"] == 3 and sum(s["outcomes"].values()) == 3
        assert s["ci95"][0] <= s["success_rate"] <= s["ci95"][1]
    p = metrics["paired"]
    assert p["both_succeed"] + p["only_bc"] + p["only_bc_residual"] + p["neither"] == 3
    with open(out / "rollouts" / "rollouts.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["condition"], r["policy"], r["order"]) for r in rows] == [
        ("0", "bc", "0"), ("0", "bc_residual", "1"), ("1", "bc_residual", "0"), ("1", "bc", "1"),
        ("2", "bc", "0"), ("2", "bc_residual", "1")]  # alternating who goes first
    data = LeRobotDataset(ROLLOUTS_REPO_ID, root=out / "rollouts")
    assert data.meta.total_episodes == 6 and data.meta.total_frames == metrics["rollout_frames"]
    residual_ep = next(int(r["episode_index"]) for r in rows if r["policy"] == "bc_residual")
    frame = data[int(data.meta.episodes["dataset_from_index"][residual_ep])]
    np.testing.assert_allclose(frame["policy.residual"].numpy(), 0.3, atol=1e-6)
    np.testing.assert_allclose(frame["action"].numpy(),
                               np.clip(frame["policy.base_action"].numpy() + 1.5, -100, 100), atol=1e-3)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "sim proxy" in page.lower()
    md = (out / "report.md").read_text()
    assert "0123456789abcdef0123456789abcdef.dir" in md  # the lineage table reads dvc.lock
    assert metrics["lineage"]["files"]["twin"]["md5"]
    assert (out / "figures" / "summary.png").is_file()

    tmp = twin_report["tmp"]
    with pytest.raises(EvalError, match="materialize `rl_policy`"):
        build_eval_report(twin_report["recipe"], twin_report["root"], synthetic_twin["path"].parent, tiny_bc[0],
                          tmp / "none", tmp / "x")
    assert not (tmp / "x").exists()


def test_report_renders_in_headless_chromium(twin_report):
    """The acceptance view: Debian's chromium (driven by Playwright, no browser download) loads report.html
    from disk and every embedded figure decodes."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`make setup` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto((twin_report["out"] / "report.html").resolve().as_uri())
        sizes = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        tables = page.evaluate("document.querySelectorAll('table').length")
        page.screenshot(path=str(twin_report["out"].parent / "report_screenshot.png"), full_page=True)
        browser.close()
    assert len(sizes) >= 2 and all(done and w > 100 and h > 100 for done, w, h in sizes), sizes
    assert tables >= 4  # headline, paired table, per-condition table, lineage


# --- the real arm: lerobot's so101_follower over a stand-in motor bus ---------------------------------------------
class StandInBus:
    """The slice of lerobot's FeetechMotorsBus that SOFollower uses, in memory: joints move to each goal."""

    def __init__(self, motors):
        self.motors = motors
        self.position = {m: 0.0 for m in motors}
        self.position["gripper"] = 50.0
        self.is_connected = False
        self.writes: list[dict] = []
        self.torque_released = False

    def connect(self):
        self.is_connected = True

    @property
    def is_calibrated(self):
        return True

    def torque_disabled(self):
        import contextlib

        return contextlib.nullcontext()

    def configure_motors(self):
        pass

    def write(self, *args):
        pass

    def sync_read(self, register, num_retry=0):
        return dict(self.position)

    def sync_write(self, register, values):
        self.writes.append(dict(values))
        self.position.update(values)

    def disconnect(self, disable_torque=True):
        self.is_connected = False
        self.torque_released = disable_torque


def _real_robot(tmp_path, max_relative_target=10.0):
    from pipeline.eval.robots import RealArmSettings, make_real_robot

    port = tmp_path / "ttyACM_test"
    port.write_text("")  # the port must exist; the stand-in bus replaces the serial link
    robot = make_real_robot(RealArmSettings(port=str(port), calibration_dir=str(tmp_path / "calib"),
                                            max_relative_target=max_relative_target))
    robot.bus = StandInBus(robot.bus.motors)
    return robot


class ScriptedOperator:
    def __init__(self, label, after):
        self.label, self.after, self.polls = label, after, 0

    def poll(self):
        self.polls += 1
        return self.label if self.polls >= self.after else None

    def ask(self):
        return "timeout"


class FarPolicy:
    """Asks for targets far from the present joints: the clamp must cut every step."""

    name, label = "far", "far"

    def reset(self):
        pass

    def act(self, frame):
        from pipeline.eval.policies import Step

        target = np.array([90.0, -90.0, 90.0, -90.0, 90.0, 100.0])
        return Step(target, target, np.zeros(6))


def test_real_arm_clamps_each_step_and_takes_operator_labels(tmp_path):
    from pipeline.eval.loop import run_episode
    from pipeline.eval.robots import Condition

    robot = _real_robot(tmp_path)
    robot.connect()
    cond = Condition(0, 0, (0.2, 0.0), 30.0)
    try:
        rollout = run_episode(robot, FarPolicy(), cond, 0, fps=200, max_steps=50, cube_z=0.0125,
                              operator=ScriptedOperator("dropped", after=4))
    finally:
        robot.disconnect()
    assert rollout.outcome == "dropped" and rollout.steps == 4
    steps = np.array([[w[m] for m in robot.bus.motors] for w in robot.bus.writes])
    start = np.array([0.0] * 5 + [50.0])
    moves = np.abs(np.diff(np.vstack([start, steps]), axis=0))
    assert moves.max() == pytest.approx(10.0)  # lerobot's max_relative_target clamp, every step
    env = rollout.frames[0]["observation.environment_state"]
    np.testing.assert_allclose(env[:3], [0.2, 0.0, 0.0125], atol=1e-6)  # the placed pose stands in for a tracker
    assert robot.bus.torque_released


def test_real_arm_releases_torque_when_the_policy_fails(tmp_path):
    from pipeline.eval.loop import run_episode
    from pipeline.eval.robots import Condition

    class Broken(FarPolicy):
        def act(self, frame):
            raise RuntimeError("policy crashed")

    robot = _real_robot(tmp_path)
    robot.connect()
    with pytest.raises(RuntimeError, match="policy crashed"):
        try:
            run_episode(robot, Broken(), Condition(0, 0, (0.2, 0.0), 0.0), 0, fps=200, max_steps=5,
                        operator=ScriptedOperator("success", after=99))
        finally:
            robot.disconnect()
    assert robot.bus.torque_released and robot.bus.writes == []


def test_real_arm_refuses_without_a_port(tmp_path):
    from pipeline.eval.robots import RealArmSettings, RobotUnavailable, make_real_robot

    with pytest.raises(RobotUnavailable, match="does not exist"):
        make_real_robot(RealArmSettings(port=str(tmp_path / "ttyACM9")))
    with pytest.raises(RobotUnavailable, match="port is empty"):
        make_real_robot(RealArmSettings(port=""))
    proc = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "pipeline.eval.stage", "--robot", "so101_follower", "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "eval.real.port is empty" in proc.stderr


# --- the sim workcell as the stand-in real robot -------------------------------------------------------------------
def test_workcell_robot_is_a_stand_in_real_arm(small_recipe, workcell_xml, tiny_bc, tmp_path):
    """Joints and camera images only by default (no cube pose: the policy gets the placed pose, as on a real cell);
    the same paired loop; outcomes from the workcell's own state, a scripted expert's episode classified `success`;
    with `report_cube_pose` the live cube pose, as a tracker would give."""
    from pipeline.eval.loop import observation_frame
    from pipeline.eval.policies import BCPolicy, ResidualPolicy
    from pipeline.eval.robots import OUTCOMES, WorkcellRobot, WorkcellRobotConfig, draw_condition, placed_pose
    from pipeline.eval.stage import run_pairs
    from pipeline.workcell.expert import ScriptedExpert

    cfg = small_recipe.workcell
    robot = WorkcellRobot(WorkcellRobotConfig(id="stand-in", workcell_xml=workcell_xml, workcell=cfg))
    robot.connect()
    try:
        conditions = [draw_condition(k, 500 + k, cfg) for k in range(2)]
        robot.start_episode(conditions[0])
        np.testing.assert_allclose(robot.cube_pos()[:2], conditions[0].cube_xy, atol=1e-9)
        obs = robot.get_observation()
        assert obs["front"].shape == (48, 64, 3) and obs["wrist"].dtype == np.uint8
        assert not any(k.startswith("cube_") for k in obs)  # a real arm has no cube sensor

        bc_dir = tiny_bc[0]
        ckpt = bc_dir / "pretrained_model"
        policies = [BCPolicy(ckpt), ResidualPolicy(_rl_dir(tmp_path / "rl", bc_dir, _actor("constant", 0.3)), ckpt)]
        rollouts = run_pairs(robot, policies, conditions, fps=cfg.fps, max_steps=10, cube_z=cfg.cube.size / 2,
                             prepare=lambda cond, _policy: robot.start_episode(cond))
        assert [(r.policy, r.condition.index) for r in rollouts] == [("bc", 0), ("bc_residual", 0),
                                                                     ("bc_residual", 1), ("bc", 1)]
        assert all(r.outcome in OUTCOMES and r.steps == 10 for r in rollouts)
        for r in rollouts:  # the policy read the placed pose, never the live cube
            np.testing.assert_allclose(r.frames[-1]["observation.environment_state"],
                                       placed_pose(r.condition, cfg.cube.size / 2), atol=1e-6)
            assert r.frames[0]["observation.images.front"].shape == (48, 64, 3)
        again = run_pairs(robot, policies[:1], conditions[:1], fps=cfg.fps, max_steps=10, cube_z=cfg.cube.size / 2,
                          prepare=lambda cond, _policy: robot.start_episode(cond))
        for f0, f1 in zip(rollouts[0].frames, again[0].frames):  # the same condition, the same rollout
            np.testing.assert_array_equal(f0["action"], f1["action"])
    finally:
        robot.disconnect()

    blind = WorkcellRobot(WorkcellRobotConfig(id="blind", workcell_xml=workcell_xml, workcell=cfg, render_cameras=()))
    blind.connect()
    try:
        condition = draw_condition(0, 7, cfg)
        blind.start_episode(condition)
        expert = ScriptedExpert(blind.cell, small_recipe.expert, condition.seed)
        expert.plan()
        while not expert.done() and blind.steps < int(cfg.episode_seconds * cfg.fps):
            blind.send_action(dict(zip(robot.action_features, expert.act())))
        hold = {k: v for k, v in blind.get_observation().items()}
        for _ in range(blind.config.success_hold_steps + 2):
            blind.send_action(hold)
        assert blind.outcome() == "success", blind.outcome()
    finally:
        blind.disconnect()

    # eval.cube_pose: tracked — the cube's live pose, as a tracker on the cell reports it (the default BC reads it):
    # after the expert carried the cube to the bin, the observation says where it is now, not where it was placed
    tracked = WorkcellRobot(WorkcellRobotConfig(id="tracked", workcell_xml=workcell_xml, workcell=cfg,
                                                render_cameras=(), report_cube_pose=True))
    tracked.connect()
    try:
        tracked.start_episode(condition)
        expert = ScriptedExpert(tracked.cell, small_recipe.expert, condition.seed)
        expert.plan()
        while not expert.done() and tracked.steps < int(cfg.episode_seconds * cfg.fps):
            tracked.send_action(dict(zip(robot.action_features, expert.act())))
        obs = tracked.get_observation()
        assert "cube_x" in tracked.observation_features and "cube_x" not in robot.observation_features
        cube = np.array([obs[k] for k in ("cube_x", "cube_y", "cube_z")])
        np.testing.assert_allclose(cube, tracked.cube_pos(), atol=1e-9)
        assert np.linalg.norm(cube[:2] - np.asarray(condition.cube_xy)) > 0.05  # it moved: the pose is live
        frame = observation_frame(obs, placed_pose(condition, cfg.cube.size / 2))
        np.testing.assert_allclose(frame["observation.environment_state"][:3], cube, atol=1e-6)
    finally:
        tracked.disconnect()


def test_sim_pairs_in_worker_processes_match_one_process(small_recipe, workcell_xml, tiny_bc, tmp_path):
    """`eval.workers`: conditions run side by side in spawned processes, each with its own stand-in robot and
    policies; the rollouts come back in condition order, step for step what one process produces."""
    from functools import partial

    from pipeline.eval.robots import draw_condition
    from pipeline.eval.stage import _workcell_robot, load_policies, run_sim_pairs

    rl = _rl_dir(tmp_path / "rl", tiny_bc[0], _actor("constant", 0.3))
    cfg = small_recipe.workcell
    conditions = [draw_condition(k, 900 + k, cfg) for k in range(3)]
    make_robot = partial(_workcell_robot, small_recipe, workcell_xml.parent, tiny_bc[0], True)
    make_policies = partial(load_policies, small_recipe, tiny_bc[0], rl)
    seen = []
    runs = {w: run_sim_pairs(make_robot, make_policies(), make_policies, conditions, cfg.fps, 8, w,
                             cube_z=cfg.cube.size / 2, progress=seen.append) for w in (1, 2)}
    assert len(seen) == 12  # progress reported for every rollout, in both modes
    assert [(r.policy, r.condition.index) for r in runs[2]] == [(r.policy, r.condition.index) for r in runs[1]]
    for one, two in zip(runs[1], runs[2]):
        assert one.outcome == two.outcome and one.steps == two.steps
        for f1, f2 in zip(one.frames, two.frames):
            np.testing.assert_allclose(f2["action"], f1["action"], atol=1e-4)
            np.testing.assert_allclose(f2["observation.environment_state"], f1["observation.environment_state"],
                                       atol=1e-5)


def test_workcell_evaluation_reports_the_stand_in_robot_beside_the_twin(tmp_path, small_recipe, workcell_xml, tiny_bc,
                                                                       synthetic_twin):
    """The default `eval.robot: workcell` with `compare_twin`: the same paired protocol on the stand-in real robot
    (the cameras the BC checkpoint reads recorded in the rollouts) and, on the same cube poses, in the twin; the
    report's headline, transfer numbers and behaviour checks come from those rollouts."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from pipeline.eval.report import transfer
    from pipeline.eval.stage import ROLLOUTS_REPO_ID, build_eval_report, cameras_read_by

    rl = _rl_dir(tmp_path / "rl", tiny_bc[0], _actor("constant", 0.3))
    root = tmp_path / "project"
    root.mkdir()
    assert small_recipe.eval.robot == "workcell" and small_recipe.eval.compare_twin  # the default recipe's choice
    recipe = small_recipe.model_copy(update={"eval": small_recipe.eval.model_copy(
        update={"pairs": 2, "episode_seconds": 0.4, "failure_examples": 1})})
    out = tmp_path / "reports" / "eval"
    metrics = build_eval_report(recipe, root, synthetic_twin["path"].parent, tiny_bc[0], rl, out, log=lambda m: None,
                                workcell_dir=workcell_xml.parent)
    assert metrics["robot"] == "workcell" and "stand-in real robot" in metrics["robot_label"]
    assert metrics["pairs"] == 2 and all(metrics["policies"][p]["episodes"] == 2 for p in ("bc", "bc_residual"))
    md = (out / "report.md").read_text()
    head = md.split("## On")[0]
    assert "stand-in real robot" in md and "Twin fidelity gap" in head
    assert ("Pure method gain" in head) != ("flagged" in head)  # the gain is a result unless the robot got worse
    data = LeRobotDataset(ROLLOUTS_REPO_ID, root=out / "rollouts")
    cams = cameras_read_by(tiny_bc[0])
    assert set(data.meta.video_keys) == {f"observation.images.{c}" for c in cams}
    assert data.meta.robot_type == "so101_follower_workcell" and data.meta.total_episodes == 4
    twin_data = LeRobotDataset(ROLLOUTS_REPO_ID, root=out / "twin_rollouts")
    assert twin_data.meta.robot_type == "so101_follower_twin" and twin_data.meta.total_episodes == 4
    assert metrics["lineage"]["files"]["workcell (stand-in robot)"]["md5"] and metrics["lineage"]["files"]["twin"]
    # the same cube poses in both worlds; the transfer numbers recomputed from the two rollout tables
    worlds = {}
    for name, folder in (("robot", "rollouts"), ("twin", "twin_rollouts")):
        with open(out / folder / "rollouts.csv") as f:
            worlds[name] = list(csv.DictReader(f))
    assert [(r["condition"], r["cube_x"], r["cube_y"]) for r in worlds["robot"]] == \
        [(r["condition"], r["cube_x"], r["cube_y"]) for r in worlds["twin"]]
    rows = {w: [_StoredRollout(r) for r in rs] for w, rs in worlds.items()}
    assert metrics["transfer"] == json.loads(json.dumps(transfer(rows["robot"], rows["twin"])))
    assert {c["name"] for c in metrics["checks"]} == {"residual_not_worse_than_bc", "twin_reproduces_bc"}
    assert (out / "figures" / "transfer.png").is_file()


class _StoredRollout:
    """A row of rollouts.csv with the attributes the report reads."""

    def __init__(self, row: dict):
        from types import SimpleNamespace

        self.policy, self.outcome = row["policy"], row["outcome"]
        self.success = row["outcome"] == "success"
        self.seconds = float(row.get("seconds", 1.0))
        self.condition = SimpleNamespace(index=int(row["condition"]))


def _rollouts(table: dict[str, str]) -> list:
    """Rollouts from {policy: "1101..."} (condition k succeeds where character k is 1)."""
    return [_StoredRollout({"policy": p, "condition": k, "outcome": "success" if ch == "1" else "no_grasp"})
            for p, flags in table.items() for k, ch in enumerate(flags)]


def test_transfer_numbers_on_a_hand_checked_table():
    """Ten conditions. Robot: BC solves 0-5 (6/10), BC + residual 0-3 and 6-9 (8/10): gain +20 (2 only-BC, 4
    only-residual). Twin: BC solves 0-2 (3/10), BC + residual 0-8 (9/10): gain +60, fidelity gap 3 - 6 = -30 points
    (BC solves 3, 4, 5 only on the robot, nothing only in the twin). Per condition, twin gain - robot gain:
    conditions 4, 5 give (1-0) - (0-1) = +2, 3 gives (1-0) - (1-1) = +1, 6-8 give (1-0) - (1-0) = 0, 9 gives
    (0-0) - (1-0) = -1, 0-2 give 0: mean 4/10 = +40 points."""
    from scipy.stats import binomtest

    from pipeline.common.stats import paired_difference_interval
    from pipeline.eval.report import fidelity_checks, summarize, transfer

    robot = _rollouts({"bc": "1111110000", "bc_residual": "1111001111"})
    twin = _rollouts({"bc": "1110000000", "bc_residual": "1111111110"})
    t = transfer(robot, twin)
    assert t["conditions"] == 10
    assert t["success"]["robot"]["bc"]["successes"] == 6 and t["success"]["twin"]["bc_residual"]["successes"] == 9
    assert t["gain"]["robot"]["points"] == pytest.approx(20.0)
    assert (t["gain"]["robot"]["only_bc"], t["gain"]["robot"]["only_bc_residual"]) == (2, 4)
    assert t["gain"]["twin"]["points"] == pytest.approx(60.0)
    gap = t["fidelity_gap"]
    assert gap["points"] == pytest.approx(-30.0) and (gap["only_robot"], gap["only_twin"]) == (3, 0)
    assert gap["mcnemar_exact_p"] == pytest.approx(binomtest(3, 3, 0.5).pvalue)  # 0.25
    bc_robot = [True] * 6 + [False] * 4
    bc_twin = [True] * 3 + [False] * 7
    _, low, high = paired_difference_interval(bc_robot, bc_twin)
    assert gap["ci95_points"] == pytest.approx([100 * low, 100 * high])
    per = np.array([0, 0, 0, 1, 2, 2, 0, 0, 0, -1], dtype=float)
    half = 1.959964 * per.std(ddof=1) / math.sqrt(10)
    assert t["gain_transfer"]["points"] == pytest.approx(40.0)
    assert t["gain_transfer"]["ci95_points"] == pytest.approx([100 * (0.4 - half), 100 * (0.4 + half)], abs=1e-3)

    # behaviour checks: BC 6/10 (Wilson 31-83 %) on the robot and 3/10 (11-60 %) in the twin overlap
    checks = {c["name"]: c for c in fidelity_checks(summarize(robot, 30), t, max_harm_points=10)}
    assert checks["twin_reproduces_bc"]["passed"] and checks["residual_not_worse_than_bc"]["passed"]
    # a residual that loses 3 of BC's 6 successes on the robot is flagged, naming the numbers
    harmful = _rollouts({"bc": "1111110000", "bc_residual": "1110000000"})
    check = {c["name"]: c for c in fidelity_checks(summarize(harmful, 30), None, max_harm_points=10)}
    assert not check["residual_not_worse_than_bc"]["passed"]
    assert "3/10 vs BC alone 6/10, -30.0 points" in check["residual_not_worse_than_bc"]["description"]
    assert "twin_reproduces_bc" not in check  # no twin rollouts, no fidelity check
    # a twin where BC fails everything while the robot succeeds 9 of 10: the intervals do not overlap
    good_robot = _rollouts({"bc": "1111111110", "bc_residual": "1111111110"})
    bad_twin = _rollouts({"bc": "0000000000", "bc_residual": "0000000000"})
    check = {c["name"]: c for c in fidelity_checks(summarize(good_robot, 30), transfer(good_robot, bad_twin), 10)}
    assert not check["twin_reproduces_bc"]["passed"]
    assert "the twin is the worse world" in check["twin_reproduces_bc"]["description"]
