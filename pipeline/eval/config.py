"""The `eval` section of params.yaml: the paired BC vs BC + residual evaluation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.common.sections import Section, Positive

class EvalRealConfig(Section):
    """A real SO-101 follower (lerobot `so101_follower`; needs `lerobot[feetech]`, installed with Twinloop)."""

    port: str = ""  # e.g. /dev/ttyACM0 (`lerobot-find-port`)
    robot_id: str = "twinloop_follower"  # lerobot calibration id
    calibration_dir: str = ""  # '' = lerobot's default calibration folder
    max_relative_target: Positive = 10.0  # lerobot's per-step clamp (so101 units): always on
    cameras: dict[str, dict[str, str | int | float]] = {}  # name -> OpenCVCameraConfig fields (recorded, not read)
    cube_z_m: Positive = 0.0125  # centre height of the placed cube (the BC policy reads the placed pose)


class EvalConfig(Section):
    """Stage `eval_report`: BC alone vs BC + residual, paired on the same initial conditions, on one robot."""

    robot: Literal["twin", "workcell", "so101_follower"] = "workcell"  # the robot judged: workcell = the stand-in
    # real robot of the sim recipe; twin = the twin alone (no transfer numbers)
    compare_twin: bool = True  # also run the same conditions in the twin: fidelity gap and gain transfer
    pairs: Annotated[int, Field(ge=1)] = 30  # initial conditions; each runs both policies, in alternating order
    seed: int = 3_000_000  # condition k draws from seed + k (held out from rl.seed and rl.eval_seed)
    episode_seconds: Positive = 8.0
    randomize: bool = False  # twin: held-out draws of rl.randomization's ranges (mass, gains, latency, noise);
    # off by default so that the twin column measures the nominal twin against the robot on the same cube poses
    # what the policy is told of the cube in both sim worlds (the stand-in robot and the twin alike, so the columns
    # compare): tracked = its live pose, as a tracker on the cell would give (the default BC reads
    # observation.environment_state and was trained on the live pose); placed = only the placed pose, frozen for
    # the episode, as on a real arm without a tracker (a real SO-101 always gets this)
    cube_pose: Literal["tracked", "placed"] = "tracked"
    max_harm_points: Annotated[float, Field(ge=0)] = 10.0  # residual_not_worse_than_bc warns when BC + residual
    # is this many points below BC on the robot, or below it with an exact McNemar p < 0.05
    # sim robots (twin, workcell): processes that run conditions side by side (each its own robot and policies;
    # outcomes do not depend on it: each condition is seeded and starts from a reset). 1 = in this process
    workers: Annotated[int, Field(ge=1)] = 1
    extra_policies: list[str] = []  # more rl_policy folders (other rl.seed): success variance across policy seeds
    failure_examples: Annotated[int, Field(ge=0)] = 4  # failed rollouts shown with frames
    real: EvalRealConfig = EvalRealConfig()
