"""The `demos` section of params.yaml: where the demonstrations come from and the quality gate they pass."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.common.sections import Section, Positive

class DemoChecksConfig(Section):
    """Thresholds of the `demos` quality checks (units: so101_follower joint units, frames)."""

    min_episodes: Annotated[int, Field(ge=1)] = 5
    timestamp_tolerance_s: Positive = 1e-3
    idle_range_units: float = Field(3.0, ge=0)  # an episode whose arm actions never span more than this is idle
    max_lag_frames: Annotated[int, Field(ge=0)] = 6  # state trailing the action by more frames than this: warn
    duplicate_distance_units: float = Field(0.5, ge=0)  # mean |Δaction| between two episodes below this: warn


class DemosConfig(Section):
    """Where the demonstrations come from and what they must satisfy."""

    source: Literal["sim", "local", "hub"] = "sim"
    local_path: str = ""  # source: local — a LeRobot v3.0 dataset folder
    repo_id: str = ""  # source: hub — a Hugging Face dataset repo id (needs network)
    state_only: bool = False  # accept a dataset without camera videos, keeping state/action only
    episodes: Annotated[int, Field(ge=1)] = 80  # source: sim — successful episodes to record
    seed: int = 0
    task: str = "Pick the red cube and place it in the blue bin"
    checks: DemoChecksConfig = DemoChecksConfig()
