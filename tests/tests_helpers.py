from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_RECORDING = ROOT.parent / "shared" / "data" / "so101-real-pickplace"  # CI has it; users do not

# conftest's synthetic twin carries the servo prior (no demos to identify from), so rl has no fit spread to centre
# its servo randomization on: the tests that train or randomize on it set the ranges, as a user of such a twin must.
PRIOR_TWIN_SERVO_RANGES = {"joint_gain_scale": {"low": 0.85, "high": 1.15}, "action_latency_steps": [0, 1]}
