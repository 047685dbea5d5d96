"""The `bc_policy` stage: real lerobot training runs (a few steps), resume after a kill, real diagnostics."""

import json
import signal
import subprocess
import time

import pytest

from pipeline.bc.stage import BcInputError, build_bc_policy, child_command, lerobot_train_args, plan_run


def tiny(recipe, **bc):
    """A recipe that trains for seconds: a few steps, small batches, two closed-loop episodes."""
    settings = {"steps": 6, "save_freq": 3, "log_freq": 1, "batch_size": 4, "held_out_episodes": 1,
                "eval_episodes": 2} | bc
    return recipe.model_copy(update={"bc": recipe.bc.model_copy(update=settings)})


@pytest.fixture(scope="module")
def trained(tiny_bc):
    return tiny_bc  # conftest: the same tiny recipe as `tiny` above, trained once per session


def test_checkpoint_is_lerobot_loadable(trained):
    from lerobot.policies.act.modeling_act import ACTPolicy

    out, _ = trained
    model = out / "pretrained_model"
    for name in ("config.json", "model.safetensors", "train_config.json", "policy_preprocessor.json"):
        assert (model / name).is_file(), name
    policy = ACTPolicy.from_pretrained(model)
    assert set(policy.config.input_features) == {"observation.state", "observation.environment_state"}
    assert policy.config.chunk_size == 20  # the recipe's policy_options reached lerobot's config


def test_diagnostics_come_from_real_rollouts(trained, recorded):
    out, metrics = trained
    assert json.loads((out / "metrics.json").read_text())["sim_success_rate"] == metrics["sim_success_rate"]
    assert metrics["train_steps"] == 6 and metrics["final_loss"] > 0
    assert metrics["sim_episodes"] == 2 and len(metrics["sim_failed_seeds"]) == 2 - metrics["sim_successes"]
    low, high = metrics["sim_success_ci95"]
    assert 0 <= low <= metrics["sim_success_rate"] <= high <= 1 and high - low > 0.3  # 2 episodes: a wide interval
    assert metrics["held_out_episodes"] == [1]
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata("twinloop/demos", root=recorded)
    assert metrics["held_out_frames"] == int(meta.episodes[1]["length"])  # every frame of the held-out episode
    per_joint = metrics["held_out_action_mse_per_joint"]
    assert len(per_joint) == 6 and all(v >= 0 for v in per_joint.values())
    assert metrics["action_magnitude_ratio"] > 0 and metrics["sim_mean_action_step"] > 0
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [int(r["steps"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for png in ("loss.png", "rollouts.png"):
        assert (out / png).stat().st_size > 10_000


def test_killed_run_resumes_from_its_last_checkpoint(small_recipe, recorded, workcell_xml, tmp_path):
    long = tiny(small_recipe, steps=10_000, save_freq=2)
    run = plan_run(long, recorded, workcell_xml, tmp_path / "bc", tmp_path / "runs", device="cpu")
    child = subprocess.Popen(child_command(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = run.lerobot_dir / "checkpoints" / "000002" / "training_state" / "training_step.json"
    deadline = time.time() + 300
    while not first.is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # let the checkpoint finish writing
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert first.is_file(), "no checkpoint written before the kill"
    done = json.loads((run.last_checkpoint / "training_state" / "training_step.json").read_text())["step"]
    assert 2 <= done < 10_000

    # Same recipe and demos, fewer total steps than the killed run aimed for (steps is not part of the fingerprint):
    again = plan_run(tiny(small_recipe, steps=done + 2, save_freq=2), recorded, workcell_xml, tmp_path / "bc",
                     tmp_path / "runs", device="cpu")
    assert again.work_dir == run.work_dir
    assert "--resume=true" in lerobot_train_args(again, recorded, "cpu")
    metrics = build_bc_policy(tiny(small_recipe, steps=done + 2, save_freq=2), recorded, workcell_xml,
                              tmp_path / "bc", tmp_path / "runs", device="cpu")
    assert metrics["resumed_from_step"] == done and metrics["train_steps"] == done + 2
    steps_logged = [int(json.loads(line)["steps"]) for line in (tmp_path / "bc" / "train_log.jsonl").read_text()
                    .splitlines()]
    # continued, not restarted at 1; lines the killed run logged past its checkpoint are not doubled
    assert steps_logged == list(range(1, done + 3))


def test_changed_recipe_or_demos_start_fresh(small_recipe, recorded, workcell_xml, tmp_path):
    first = plan_run(tiny(small_recipe), recorded, workcell_xml, tmp_path / "bc", tmp_path / "runs")
    (first.lerobot_dir / "checkpoints" / "last").mkdir(parents=True)
    assert plan_run(tiny(small_recipe, steps=99), recorded, workcell_xml, tmp_path / "bc",
                    tmp_path / "runs").work_dir == first.work_dir  # more steps: same run, continued
    options = small_recipe.bc.policy_options
    changed = tiny(small_recipe, policy_options={**options, "act": {**options["act"], "chunk_size": 10}})
    second = plan_run(changed, recorded, workcell_xml, tmp_path / "bc", tmp_path / "runs")
    assert second.work_dir != first.work_dir
    assert not (tmp_path / "runs" / "bc" / first.work_dir.rsplit("/", 1)[-1]).exists()  # stale checkpoints gone
    assert "--resume=true" not in lerobot_train_args(second, recorded, "cpu")


def test_bad_inputs_are_named(small_recipe, recorded, workcell_xml, tmp_path):
    with pytest.raises(BcInputError, match="no demos"):
        plan_run(small_recipe, tmp_path / "nothing", workcell_xml, tmp_path / "bc", tmp_path / "runs")
    wants_camera = tiny(small_recipe, observations=("observation.state", "observation.images.top"))
    with pytest.raises(BcInputError, match="observation.images.top"):
        plan_run(wants_camera, recorded, workcell_xml, tmp_path / "bc", tmp_path / "runs")
    with pytest.raises(BcInputError, match="cannot hold out 2"):
        plan_run(tiny(small_recipe, held_out_episodes=2), recorded, workcell_xml, tmp_path / "bc", tmp_path / "runs")
    assert not (tmp_path / "bc").exists()  # nothing written on refusal


def test_diffusion_is_selectable(small_recipe, recorded, workcell_xml, tmp_path):
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    metrics = build_bc_policy(tiny(small_recipe, policy="diffusion", steps=2, save_freq=2, eval_episodes=1),
                              recorded, workcell_xml, tmp_path / "bc", tmp_path / "runs", device="cpu")
    assert metrics["policy"] == "diffusion" and metrics["train_steps"] == 2 and metrics["sim_episodes"] == 1
    assert DiffusionPolicy.from_pretrained(tmp_path / "bc" / "pretrained_model").config.horizon == 16


def test_smolvla_without_local_weights_is_refused(recipe):
    from pipeline.common.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError, match="smolvla fine-tunes pretrained weights"):
        parse_recipe({"bc": {"policy": "smolvla"}})


def test_batched_bc_matches_lerobot_select_action_per_env(trained):
    """The residual's base: many envs through one forward pass, each with its own temporal ensemble, must act as
    lerobot's `select_action` acts on one env — also when one env restarts its episode mid-way."""
    import numpy as np
    import torch

    from pipeline.bc.evaluate import LerobotPolicy
    from pipeline.rl.base_policy import BatchedBC

    checkpoint = trained[0] / "pretrained_model"
    rng = np.random.default_rng(0)
    frames = [{"observation.state": rng.normal(0, 30, 6).astype(np.float32),
               "observation.environment_state": (np.r_[0.2, 0.0, 0.0125, 1, 0, 0, 0]
                                                 + rng.normal(0, 0.01, 7)).astype(np.float32)} for _ in range(12)]
    reference = LerobotPolicy(checkpoint)
    reference.reset()
    expected = np.stack([reference.act(f) for f in frames])
    reference.reset()
    expected_restarted = np.stack([reference.act(f) for f in frames[5:]])

    batched = BatchedBC(checkpoint, num_envs=3)
    got = []
    for t, frame in enumerate(frames):
        if t == 5:
            batched.reset([2])  # env 2 starts a new episode here
        got.append(batched({k: torch.tensor(np.stack([v] * 3)) for k, v in frame.items()}).numpy())
    got = np.stack(got)
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-3)
    np.testing.assert_allclose(got[:, 1], expected, atol=1e-3)
    np.testing.assert_allclose(got[5:, 2], expected_restarted, atol=1e-3)
    assert not np.allclose(got[5:, 0], got[5:, 2], atol=1e-3)  # the restart mattered
