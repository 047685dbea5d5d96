"""The `rl_policy` stage on CPU: the Isaac Lab env on a generated twin, BC through the env, PPO with resume.

Isaac Lab keeps one simulation per process: the env test below is the only one in this process; the training runs
in a child process, as the Dagster asset runs it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests_helpers import PRIOR_TWIN_SERVO_RANGES, ROOT


@pytest.fixture(scope="module")
def env(recipe, synthetic_twin, tiny_bc):
    from pipeline.rl.env import TwinPickPlaceEnv
    from pipeline.rl.env_cfg import make_env_cfg

    small = recipe.model_copy(update={"rl": recipe.rl.model_copy(update={"episode_seconds": 0.5})})
    cfg = make_env_cfg(small, synthetic_twin["path"], tiny_bc[0] / "pretrained_model", num_envs=3,
                       evaluation=True, seed=7)
    environment = TwinPickPlaceEnv(cfg)
    yield environment
    environment.close()


def test_env_resets_steps_and_a_zero_residual_is_exactly_bc(env, tiny_bc):
    import torch

    from pipeline.bc.evaluate import LerobotPolicy
    from pipeline.workcell.joints import lerobot_to_sim

    obs, _ = env.reset()
    assert obs["policy"].shape == (3, 18) and obs["critic"].shape == (3, 35)
    start, _ = env.cube_local()
    assert torch.all(start[:, 0] >= 0.16) and torch.all(start[:, 0] <= 0.24)  # the workcell's spawn range
    assert len({round(float(x), 6) for x in start[:, 0]}) == 3  # a different seeded pose per env
    seen, targets = [], []
    for _ in range(6):
        seen.append({k: v[0].clone().numpy() for k, v in env._observation().items()})
        obs, reward, terminated, truncated, _ = env.step(torch.zeros(3, 6))
        targets.append(env.target[0].clone().numpy())
        assert torch.isfinite(reward).all()
    # the same observations through lerobot's own select_action: the env commanded exactly those actions
    bc = LerobotPolicy(tiny_bc[0] / "pretrained_model")
    bc.reset()
    expected = lerobot_to_sim(np.stack([bc.act(o) for o in seen]))
    np.testing.assert_allclose(np.stack(targets), np.clip(expected, env.lo.numpy(), env.hi.numpy()), atol=1e-4)
    # a 0.5 s episode (15 control steps) ends, and the env starts over on the next seeded pose
    ended = False
    for _ in range(20):
        _, _, terminated, truncated, _ = env.step(torch.zeros(3, 6))
        ended |= bool((terminated | truncated).any())
    assert ended and int(env.episode_length_buf.max()) < 15

    # The servo target is written once per control step, not before each of the 8 physics steps: the same
    # trajectory as writing it every physics step (the same seeded episode replayed both ways).
    def rollout():
        env.next_seed = 0
        env.reset()
        residual = torch.full((3, 6), 0.3)
        return np.stack([env.step(residual)[0]["policy"][:, :6].numpy().copy() for _ in range(8)])

    once = rollout()
    apply_once = env._apply_action
    env._apply_action = lambda: env.robot.actuators.target_command.set_position_index(value=env.target)
    try:
        every = rollout()
    finally:
        env._apply_action = apply_once
    assert np.abs(once).max() > 0 and np.array_equal(once, every)


def test_training_writes_a_checkpoint_exports_the_actor_and_resumes(tmp_path, synthetic_twin, tiny_bc):
    import torch

    recipe = yaml.safe_load((ROOT / "params.yaml").read_text())
    recipe["rl"].update(num_envs=4, iterations=2, steps_per_env=4, eval_episodes=4, episode_seconds=0.5,
                        save_every=1)
    recipe["rl"]["randomization"].update(PRIOR_TWIN_SERVO_RANGES)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "pipeline.rl.stage", "--params", str(params),
               "--twin", str(synthetic_twin["path"].parent), "--bc", str(tiny_bc[0]),
               "--out", str(tmp_path / "rl"), "--runs", str(tmp_path / "runs")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "rl"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_iteration"] == 0 and metrics["train_env_steps"] == 2 * 4 * 4
    for name in ("bc", "bc_residual"):
        s = metrics["twin_success"][name]
        assert s["episodes"] == 4 and 0 <= s["ci95"][0] <= s["success_rate"] <= s["ci95"][1] <= 1
    assert metrics["training_curve"]["mean_reward"]  # read back from rsl_rl's log
    manifest = json.loads((out / "policy_manifest.json").read_text())
    assert manifest["alpha"] == recipe["rl"]["alpha"] and len(manifest["actor_observation"]) == 18
    actor = torch.jit.load(str(out / "residual_actor.pt"))
    assert actor(torch.zeros(1, 18)).shape == (1, 6)
    assert (out / "model.pt").is_file() and (out / "evaluation.png").is_file()

    recipe["rl"]["iterations"] = 3  # one more iteration: resumes the same work folder
    params.write_text(yaml.safe_dump(recipe))
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_iteration"] == 2 and metrics["train_env_steps"] == 1 * 4 * 4


def test_the_residual_starts_at_exactly_zero_and_still_explores():
    """`zero_residual_head`: before training, the actor's mean residual is 0 for any observation (BC + residual is
    BC), while PPO's sampled actions still spread by the Gaussian's std."""
    import torch
    from rsl_rl.models import MLPModel
    from tensordict import TensorDict

    from pipeline.rl.stage import zero_residual_head

    obs = TensorDict({"policy": torch.randn(64, 18)}, batch_size=[64])
    actor = MLPModel(obs, {"actor": ["policy"]}, "actor", 6, hidden_dims=[32, 32], obs_normalization=True,
                     distribution_cfg={"class_name": "GaussianDistribution", "init_std": 0.3})
    assert actor(obs).abs().max() > 0  # rsl_rl's own initialization: a random offset
    zero_residual_head(actor)
    assert torch.equal(actor(obs), torch.zeros(64, 6))
    sampled = actor(obs, stochastic_output=True)
    assert 0.2 < float(sampled.std()) < 0.4


def test_a_success_is_worth_more_than_hovering_the_cube_over_the_bin(recipe):
    """Success ends an episode: without the payout for the steps it cuts off, reach + lift + place per step over
    the rest of the episode outweigh it and PPO learns never to let go (measured: BC 7/32 -> 0/32 in the twin)."""
    import torch

    from pipeline.rl.env import pick_place_reward

    w = recipe.rl.rewards.model_dump()
    horizon = int(recipe.rl.episode_seconds * recipe.workcell.fps)
    gamma = 0.99  # the learner's discount (agent_cfg)
    one, zero = torch.ones(1), torch.zeros(1)
    for t in range(0, horizon, 7):  # the return from step t on, discounted as PPO sees it
        steps_left = horizon - t
        hover = sum(gamma ** k * pick_place_reward(w, one, one, one, zero, zero, zero, zero, zero)
                    for k in range(steps_left))
        # the in-bin steps the success needs (success_hold_steps), then the payout at the step that ends it
        hold = recipe.rl.success_hold_steps
        finish = sum(gamma ** k * pick_place_reward(w, one, zero, zero, one, zero, zero, zero, zero)
                     for k in range(min(hold - 1, steps_left)))
        finish = finish + gamma ** (hold - 1) * pick_place_reward(
            w, one, zero, zero, one, one, torch.tensor([float(max(steps_left - hold, 0))]), zero, zero)
        if steps_left > hold:
            assert finish.item() > hover.item(), (t, finish.item(), hover.item())
    # and without the payout, hovering wins early in the episode: the failure the payout fixes
    no_payout = sum(gamma ** k * pick_place_reward(w, one, zero, zero, one, zero, zero, zero, zero)
                    for k in range(recipe.rl.success_hold_steps))
    hover = sum(gamma ** k * pick_place_reward(w, one, one, one, zero, zero, zero, zero, zero) for k in range(horizon))
    assert no_payout.item() < hover.item()
