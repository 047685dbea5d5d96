"""The `sim_workcell` asset end to end: Dagster materialization -> stage -> DVC commit -> data version; then the
assets downstream of it on the same project, and `rl_policy` on a project of its own."""

import json
import os
import shutil
import subprocess
import sys
import time

import dagster as dg
import pytest
import yaml

from tests_helpers import PRIOR_TWIN_SERVO_RANGES


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_project):
    """A throw-away copy of the project (git + DVC repo) with a small recipe, so the test never touches ./models."""
    tmp_path = tmp_path_factory.mktemp("project")
    return tiny_project(tmp_path, {
        "expert": {"eval_episodes": 4},
        "workcell": {"cameras": {"width": 64, "height": 48}},
        "demos": {"episodes": 2, "checks": {"min_episodes": 2}},
        "bc": {"steps": 4, "save_freq": 2, "log_freq": 1, "batch_size": 4, "held_out_episodes": 1, "eval_episodes": 2},
        "capture": {"views": 16, "width": 64, "height": 48, "min_images": 8},
        "splat": {"iterations": 30, "holdout_every": 4, "init_points": 1500, "log_every": 10,
                  "min_holdout_psnr_db": 10.0},
        "project": {"dvc_remote": str(tmp_path / "remote")},
    })


def test_materialize_commits_to_dvc_and_sets_data_version(project):
    from assets.sim import expert_solves_task, sim_workcell
    from resources import default_resources

    result = dg.materialize([sim_workcell, expert_solves_task], resources=default_resources(str(project)))
    assert result.success
    mat = result.asset_materializations_for_node("sim_workcell")[0]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    md5 = lock["stages"]["sim_workcell"]["outs"][0]["md5"]
    assert mat.metadata["dvc_md5"].value == md5
    assert mat.tags["dagster/data_version"] == md5
    assert lock["stages"]["sim_workcell"]["params"]["params.yaml"]["expert"]["eval_episodes"] == 4
    assert (project / "remote").is_dir() and any((project / "remote").rglob("*"))  # pushed
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and checks[0].passed
    for name in ("workcell.xml", "workcell.json", "preview.png", "metrics.json"):
        assert (project / "models" / "workcell" / name).is_file()
    # DVC sees the committed output as up to date
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "sim_workcell"], cwd=project,
                            capture_output=True, text=True, check=True)
    assert "changed outs" not in status.stdout


def test_demos_asset_checks_and_inbox_sensor(project):
    """Runs after the workcell test above (same project): record demos, then feed the inbox a bad batch."""
    from assets.demos import demos, demos_inbox_sensor, demos_quality
    from pipeline.demos.checks import CHECK_SPECS
    from resources import default_resources

    resources = default_resources(str(project))
    result = dg.materialize([demos, demos_quality], resources=resources)
    assert result.success
    mat = result.asset_materializations_for_node("demos")[0]
    assert mat.metadata["episodes"].value == 2
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert mat.tags["dagster/data_version"] == lock["stages"]["demos"]["outs"][0]["md5"]
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert len(checks) == len(CHECK_SPECS) and all(c.passed for c in checks.values()), \
        {k: c.description for k, c in checks.items()}
    assert "video_frames" in checks and "decode at their parquet timestamps" in checks["video_frames"].description

    inbox = project / "data" / "inbox"
    shutil.copytree(project / "data" / "demos", inbox / "batch-001")
    next((inbox / "batch-001" / "data").rglob("*.parquet")).unlink()  # unreadable batch
    old = time.time() - 60  # copied a minute ago: settled
    for path in [inbox / "batch-001", *(inbox / "batch-001").rglob("*")]:
        os.utime(path, (old, old), follow_symlinks=False)
    with dg.build_sensor_context(resources=resources) as context:
        requests = list(demos_inbox_sensor(context))
    assert len(requests) == 1 and requests[0].asset_selection is None  # the sensor's: demos + the policy chain
    before = lock["stages"]["demos"]["outs"][0]["md5"]
    bad = dg.materialize([demos], resources=resources, run_config=requests[0].run_config, raise_on_error=False)
    assert not bad.success
    assert (inbox / "rejected" / "batch-001" / "REJECTED.txt").is_file()
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"]["demos"]["outs"][0]["md5"] == before
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "demos"], cwd=project,
                            capture_output=True, text=True, check=True)
    assert "changed outs" not in status.stdout  # data/demos untouched


def test_bc_policy_trains_in_a_pipes_child_and_commits(project):
    """Runs after the demos test above: the trainer child reports its loss through Dagster Pipes."""
    from assets.bc import bc_moves_like_demos, bc_policy
    from resources import default_resources

    result = dg.materialize([bc_policy, bc_moves_like_demos], resources=default_resources(str(project)))
    assert result.success
    mat = result.asset_materializations_for_node("bc_policy")[0]
    assert mat.metadata["train_steps"].value == 4  # reported by the child process, through Pipes
    assert mat.metadata["final_loss"].value > 0
    assert 0 <= mat.metadata["sim_success_rate"].value <= 1 and mat.metadata["sim_episodes"].value == 2
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert mat.tags["dagster/data_version"] == lock["stages"]["bc_policy"]["outs"][0]["md5"]
    assert (project / "models" / "bc" / "pretrained_model" / "model.safetensors").is_file()
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "bc_moves_like_demos" and check.metadata["action_magnitude_ratio"].value > 0


def test_scene_capture_and_gaussian_splat_assets(project):
    """Runs after the workcell test above: capture the sim workcell, splat it, gate it on held-out PSNR."""
    from assets.twin import gaussian_splat, scene_capture, splat_matches_holdout_views
    from resources import default_resources

    resources = default_resources(str(project))
    result = dg.materialize([scene_capture, gaussian_splat, splat_matches_holdout_views], resources=resources)
    assert result.success
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for stage in ("scene_capture", "gaussian_splat"):
        mat = result.asset_materializations_for_node(stage)[0]
        assert mat.tags["dagster/data_version"] == lock["stages"][stage]["outs"][0]["md5"]
    mat = result.asset_materializations_for_node("gaussian_splat")[0]
    assert mat.metadata["iterations"].value == 30 and mat.metadata["backend"].value == "torch"
    assert mat.metadata["holdout_psnr_db"].value > mat.metadata["initial_holdout_psnr_db"].value
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["holdout_psnr_db"].value >= 10.0

    # An unreachable bar fails the blocking check (the trained run is resumed, not redone).
    recipe = yaml.safe_load((project / "params.yaml").read_text())
    recipe["splat"]["min_holdout_psnr_db"] = 80.0
    (project / "params.yaml").write_text(yaml.safe_dump(recipe))
    try:
        failed = dg.materialize([gaussian_splat, splat_matches_holdout_views], resources=resources,
                                raise_on_error=False)
    finally:
        recipe["splat"]["min_holdout_psnr_db"] = 10.0
        (project / "params.yaml").write_text(yaml.safe_dump(recipe))
    [check] = failed.get_asset_check_evaluations()
    assert not check.passed and "80.0 dB" in check.description


def test_collision_mesh_asset(project):
    """Runs after the splat test above: mesh the (tiny, 30-step) splat, version it, run the five blocking checks."""
    from assets.twin import (collision_mesh, hull_count_within_bounds, hulls_are_closed_and_convex,
                             mesh_matches_ground_truth, objects_found_as_expected, objects_match_ground_truth)
    from resources import default_resources

    recipe = yaml.safe_load((project / "params.yaml").read_text())
    # a 30-step splat of 64x48 photos is a rough surface: no object count, a loose Chamfer bar and no object
    # thresholds (the objects are still measured against the capture's ground truth) for this test
    recipe["mesh"].update(expected_objects=None, max_chamfer_mm=50.0, object_gates={})
    (project / "params.yaml").write_text(yaml.safe_dump(recipe))
    checks = [hulls_are_closed_and_convex, hull_count_within_bounds, mesh_matches_ground_truth,
              objects_match_ground_truth, objects_found_as_expected]
    result = dg.materialize([collision_mesh, *checks], resources=default_resources(str(project)))
    assert result.success
    mat = result.asset_materializations_for_node("collision_mesh")[0]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert mat.tags["dagster/data_version"] == lock["stages"]["collision_mesh"]["outs"][0]["md5"]
    assert mat.metadata["chamfer_mm"].value > 0 and "| table | support |" in mat.metadata["parts"].value
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {next(iter(c.check_specs)).name for c in checks}
    assert evaluations["mesh_matches_ground_truth"].metadata["measured"].value is True
    assert evaluations["objects_found_as_expected"].passed  # not checked: expected_objects unset
    gate = evaluations["objects_match_ground_truth"]  # the sim capture knows its cube and bin
    assert gate.metadata["measured"].value is True and set(gate.metadata["objects"].value) == {"bin", "cube"}
    assert (project / "models" / "mesh" / "scene.json").is_file()


def test_usd_twin_asset(project):
    """Runs after the mesh test above: author the twin from that mesh and splat, version it, run its checks."""
    from assets.twin import (twin_loads_in_newton, twin_replay_gap, twin_settles_at_rest, twin_stage_is_valid,
                             twin_views_match_capture, usd_twin)
    from resources import default_resources

    scene = json.loads((project / "models" / "mesh" / "scene.json").read_text())
    objects = [p["name"] for p in scene["parts"] if p["role"] == "object" and p["name"] != "bin"]
    recipe = yaml.safe_load((project / "params.yaml").read_text())
    recipe["twin"].update(dynamic_objects=objects[:1], replay_episodes=1)  # the rough mesh may not find the cube
    # the project's 2 short demos: one fitted, one held out, a short fit (the full one is tests/stages/twin's)
    recipe["twin"]["identify"].update(heldout_episodes=1, train_episodes=1, min_frames=20, max_latency_steps=0,
                                      latency_scan_evaluations=2, max_evaluations=3, episode_refit_evaluations=1)
    (project / "params.yaml").write_text(yaml.safe_dump(recipe))
    checks = [twin_stage_is_valid, twin_loads_in_newton, twin_settles_at_rest, twin_views_match_capture,
              twin_replay_gap]
    result = dg.materialize([usd_twin, *checks], resources=default_resources(str(project)), raise_on_error=False)
    mat = result.asset_materializations_for_node("usd_twin")[0]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert mat.tags["dagster/data_version"] == lock["stages"]["usd_twin"]["outs"][0]["md5"]
    assert "| demos | 1 |" in mat.metadata["replay_gap"].value  # one demo episode replayed
    assert "| real | not measured" in mat.metadata["replay_gap"].value  # no ../shared beside the project copy
    assert "| demos (held out [" in mat.metadata["servo_identification"].value  # the twin's servos identified
    assert "servo_fit" in mat.metadata and (project / "models" / "twin" / "servo_profile.json").is_file()
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {next(iter(c.check_specs)).name for c in checks}
    for name in ("twin_stage_is_valid", "twin_loads_in_newton", "twin_views_match_capture"):
        assert evaluations[name].passed, evaluations[name].description
    assert (project / "models" / "twin" / "twin.usd").is_file()
    assert (project / "models" / "twin" / "robot" / "so101.usd").is_file()


def test_rl_policy_asset_trains_through_pipes_and_commits(tmp_path, synthetic_twin, tiny_bc, tiny_project):
    """The Dagster asset in a throw-away DVC project holding the generated twin and the tiny BC checkpoint (its own
    project, not the chain's above: the twin here is the synthetic one, tests/conftest.py's)."""
    from assets.rl import residual_helps_in_twin, rl_policy, rl_policy_is_loadable
    from resources import default_resources

    project = tiny_project(tmp_path / "project", {
        "rl": {"num_envs": 2, "iterations": 1, "steps_per_env": 2, "eval_episodes": 2, "episode_seconds": 0.5,
               "randomization": PRIOR_TWIN_SERVO_RANGES},
        "project": {"dvc_remote": ""},
    }, models={"models/twin": synthetic_twin["path"].parent, "models/bc": tiny_bc[0]})

    result = dg.materialize([rl_policy, rl_policy_is_loadable, residual_helps_in_twin],
                            resources=default_resources(str(project)))
    assert result.success
    mat = result.asset_materializations_for_node("rl_policy")[0]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert mat.tags["dagster/data_version"] == lock["stages"]["rl_policy"]["outs"][0]["md5"]
    assert "| BC alone | " in mat.metadata["twin_success"].value
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["rl_policy_is_loadable"].passed


def test_dvc_resource_refuses_a_non_dvc_directory(tmp_path):
    from resources import DvcResource, ProjectPaths
    from resources.dvc import DvcError

    dvc = DvcResource(paths=ProjectPaths(root=str(tmp_path)))
    with pytest.raises(DvcError, match="not a DVC repository"):
        dvc.commit_stage("sim_workcell")


def test_local_demos_with_a_damaged_video_fail_the_blocking_frame_check(tmp_path, recorded, workcell_xml,
                                                                       tiny_project):
    """`demos.source: local` copies what the user points at; a video damaged mid-episode imports, then the blocking
    `video_frames` check fails and names the episode (the first/last-frame `videos` check alone passes it)."""
    from demo_batches import damage_mid_episode

    from assets.demos import demos, demos_quality
    from resources import default_resources

    damaged = tmp_path / "recorded-elsewhere"
    shutil.copytree(recorded, damaged)
    damage_mid_episode(damaged, "wrist", episode=1)
    project = tiny_project(tmp_path / "project", {
        "workcell": {"cameras": {"width": 64, "height": 48}},
        "demos": {"source": "local", "local_path": str(damaged), "checks": {"min_episodes": 2}},
        "project": {"dvc_remote": str(tmp_path / "remote")},
    }, models={"models/workcell": workcell_xml.parent})  # dvc.yaml's demos stage lists the workcell as a dependency
    result = dg.materialize([demos, demos_quality], resources=default_resources(str(project)), raise_on_error=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["videos"].passed
    frames = checks["video_frames"]
    assert not frames.passed and frames.severity == dg.AssetCheckSeverity.ERROR
    assert "episode 1 frame" in frames.description and "observation.images.wrist" in frames.description
    # declared blocking: Dagster does not run what depends on `demos` after this failure
    assert [spec.blocking for spec in demos_quality.check_specs if spec.name == "video_frames"] == [True]
