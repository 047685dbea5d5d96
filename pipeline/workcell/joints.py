"""SO-101 joint conventions: lerobot's `so101_follower` units <-> simulator radians.

lerobot reports the five arm joints normalised to -100…100 (`MotorNormMode.RANGE_M100_100`) and the gripper to
0…100 (`RANGE_0_100`), each scaled to the range swept during calibration. The simulator uses radians on the
official USD's joints (`Rotation` … `Jaw`). The one mapping used everywhere in Twinloop stretches the normalised
range linearly onto the USD joint limits — the convention of `isaaclab_so101.mapping`, so a dataset recorded in
the twin and one recorded with Isaac Lab's SO-101 tooling agree:

    arm:     rad = radians(lo + (v + 100) / 200 * (hi - lo))
    gripper: rad = radians(lo + v / 100 * (hi - lo))

with (lo, hi) the USD limits in degrees from `isaaclab_so101.constants.JOINT_LIMITS_DEG`.
"""

from __future__ import annotations

import numpy as np
from isaaclab_so101.constants import JOINT_LIMITS_DEG, SIM_JOINT_NAMES

#: Feature names of `observation.state` / `action` in a real `so101_follower` recording, in order.
LEROBOT_JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
)
#: Joint names in the official SO-101 USD, same order as LEROBOT_JOINT_NAMES.
SIM_JOINTS: tuple[str, ...] = tuple(SIM_JOINT_NAMES)

_LIMITS_RAD = np.radians(np.asarray(JOINT_LIMITS_DEG, dtype=np.float64))  # (6, 2)
LIMITS_LO_RAD = _LIMITS_RAD[:, 0]
LIMITS_HI_RAD = _LIMITS_RAD[:, 1]
#: Normalised range of each lerobot value: arm joints -100…100, gripper 0…100.
LEROBOT_LO = np.array([-100.0] * 5 + [0.0])
LEROBOT_HI = np.array([100.0] * 6)


def lerobot_to_sim(values) -> np.ndarray:
    """lerobot normalised joint values (…, 6) -> simulator joint radians (…, 6)."""
    v = np.asarray(values, dtype=np.float64)
    _check_width(v)
    frac = (v - LEROBOT_LO) / (LEROBOT_HI - LEROBOT_LO)
    return LIMITS_LO_RAD + frac * (LIMITS_HI_RAD - LIMITS_LO_RAD)


def sim_to_lerobot(radians) -> np.ndarray:
    """Simulator joint radians (…, 6) -> lerobot normalised joint values (…, 6)."""
    q = np.asarray(radians, dtype=np.float64)
    _check_width(q)
    frac = (q - LIMITS_LO_RAD) / (LIMITS_HI_RAD - LIMITS_LO_RAD)
    return LEROBOT_LO + frac * (LEROBOT_HI - LEROBOT_LO)


def _check_width(a: np.ndarray) -> None:
    if a.shape[-1:] != (6,):
        raise ValueError(f"expected the 6 SO-101 joints {LEROBOT_JOINT_NAMES} on the last axis, got shape {a.shape}")
