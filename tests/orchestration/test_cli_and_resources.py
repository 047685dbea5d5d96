import json
import subprocess
import sys

import pytest

from tests_helpers import ROOT


def _twinloop(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_check_recipe_prints_section_hashes():
    proc = _twinloop("check-recipe")
    assert proc.returncode == 0, proc.stderr
    from pipeline.common.recipe import Recipe

    hashes = json.loads(proc.stdout)
    assert set(hashes) == set(Recipe.model_fields) and {"workcell", "expert", "demos"} <= set(hashes)
    assert all(len(h) == 32 for h in hashes.values())


def test_check_recipe_refuses_a_bad_key_by_name(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("expert:\n  eval_episode: 3\n")
    proc = _twinloop("--params", str(bad), "check-recipe")
    assert proc.returncode == 2
    assert "unknown key 'expert.eval_episode'" in proc.stderr and "eval_episodes" in proc.stderr


def test_run_bc_policy_without_demos_says_what_is_missing(tmp_path):
    (tmp_path / "params.yaml").write_text("bc:\n  steps: 5\n")
    proc = _twinloop("--params", str(tmp_path / "params.yaml"), "run", "bc_policy", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no demos at" in proc.stderr and "materialize the `demos` asset first" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()


def test_compute_device_cpu_never_touches_torch():
    from resources import ComputeDevice

    assert ComputeDevice(device="cpu").resolve() == "cpu"


def test_compute_device_cuda_without_gpu_is_a_clear_error():
    import torch

    from resources import ComputeDevice

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert ComputeDevice().resolve() == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        ComputeDevice(device="cuda").resolve()


def test_real_robot_needs_a_port():
    from resources import RobotConnection

    assert "twin" in RobotConnection().describe()
    with pytest.raises(ValueError, match="robot.port is empty"):
        RobotConnection(kind="so101_follower").describe()
    assert "/dev/ttyACM0" in RobotConnection(kind="so101_follower", port="/dev/ttyACM0").describe()
