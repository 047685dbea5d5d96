import numpy as np
import pandas as pd
import pytest
from isaaclab_so101.constants import JOINT_LIMITS_DEG

from pipeline.workcell.joints import LEROBOT_JOINT_NAMES, lerobot_to_sim, sim_to_lerobot
from tests_helpers import REAL_RECORDING as REAL


def test_round_trip_both_ways():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-100, 100, (500, 5)), rng.uniform(0, 100, (500, 1))], axis=1)
    np.testing.assert_allclose(sim_to_lerobot(lerobot_to_sim(values)), values, atol=1e-9)
    lo, hi = np.radians(np.array(JOINT_LIMITS_DEG)).T
    q = rng.uniform(lo, hi, (500, 6))
    np.testing.assert_allclose(lerobot_to_sim(sim_to_lerobot(q)), q, atol=1e-12)


def test_range_ends_map_to_usd_limits():
    lo, hi = np.radians(np.array(JOINT_LIMITS_DEG)).T
    np.testing.assert_allclose(lerobot_to_sim([-100, -100, -100, -100, -100, 0]), lo)
    np.testing.assert_allclose(lerobot_to_sim([100] * 6), hi)


def test_wrong_width_is_refused():
    with pytest.raises(ValueError, match="6 SO-101 joints"):
        lerobot_to_sim(np.zeros(5))


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real SO-101 recording absent")
def test_real_recording_uses_these_names_and_stays_inside_the_limits():
    import json

    info = json.loads((REAL / "meta" / "info.json").read_text())
    assert tuple(info["features"]["observation.state"]["names"]) == LEROBOT_JOINT_NAMES
    assert tuple(info["features"]["action"]["names"]) == LEROBOT_JOINT_NAMES
    frame = pd.read_parquet(REAL / "data" / "chunk-000" / "file-000.parquet")
    for key in ("observation.state", "action"):
        values = np.stack(frame[key].to_numpy())
        q = lerobot_to_sim(values)
        lo, hi = np.radians(np.array(JOINT_LIMITS_DEG)).T
        assert np.all(q >= lo - 1e-6) and np.all(q <= hi + 1e-6), key
