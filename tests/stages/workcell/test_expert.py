from pipeline.workcell.stage import evaluate_expert


def test_expert_success_rate_over_20_seeds(workcell_xml, recipe):
    metrics = evaluate_expert(workcell_xml, recipe, episodes=20, progress=False)
    print("expert:", metrics)
    assert metrics["expert_episodes"] == 20
    assert metrics["expert_success_rate"] >= 0.9, metrics


def test_expert_actions_are_smooth_and_in_range(workcell, recipe):
    """Demos must not twitch: no arm joint jumps more than 10 so101 units (~10°) between two 30 Hz steps."""
    import numpy as np

    from pipeline.workcell.expert import run_expert_episode

    actions = []
    result = run_expert_episode(workcell, recipe.expert, seed=5, on_step=actions.append)
    actions = np.array(actions)
    assert result.success
    assert np.abs(np.diff(actions[:, :5], axis=0)).max() < 10.0
    assert actions[:, :5].min() >= -100 and actions[:, :5].max() <= 100
    assert actions[:, 5].min() >= 0 and actions[:, 5].max() <= 100
