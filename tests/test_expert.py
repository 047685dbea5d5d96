from pipeline.workcell import evaluate_expert, wilson_interval


def test_expert_success_rate_over_20_seeds(workcell_xml, recipe):
    metrics = evaluate_expert(workcell_xml, recipe, episodes=20, progress=False)
    print("expert:", metrics)
    assert metrics["expert_episodes"] == 20
    assert metrics["expert_success_rate"] >= 0.9, metrics


def test_wilson_interval_known_values():
    low, high = wilson_interval(18, 20)
    assert abs(low - 0.699) < 1e-3 and abs(high - 0.972) < 1e-3
    assert wilson_interval(0, 10)[0] == 0.0
