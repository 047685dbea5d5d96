"""One evaluation loop for every robot: observe, ask the policy, send the action, record, until the episode ends.

The twin ends an episode on success held or the cube falling off, and labels it from simulator state; a real arm
runs until the operator presses an outcome key (or the time runs out, then the operator is asked). Real arms are
paced to the recording's fps; the twin runs as fast as it computes (its clock advances with each action).
"""

from __future__ import annotations

import select
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.eval.robots import OUTCOMES, Condition, placed_pose
from pipeline.workcell.joints import LEROBOT_JOINT_NAMES
from pipeline.workcell.cell import ENVIRONMENT_STATE_NAMES


@dataclass
class Rollout:
    policy: str
    condition: Condition
    order: int  # 0: this policy ran first on the condition, 1: second
    outcome: str
    steps: int
    seconds: float  # episode time at the robot's control rate (steps / fps)
    frames: list[dict] = field(default_factory=list)  # per step: observation, action, base, residual
    keyframes: list[np.ndarray] = field(default_factory=list)  # start, middle, end images where the robot has them

    @property
    def success(self) -> bool:
        return self.outcome == "success"


def observation_frame(obs: dict, fallback_cube_pose: np.ndarray | None) -> dict[str, np.ndarray]:
    """lerobot's flat robot observation -> the policy's frame (`observation.state`, `observation.environment_state`).
    Robots without cube state (a real arm) report the placed pose instead."""
    state = np.array([obs[k] for k in LEROBOT_JOINT_NAMES], dtype=np.float32)
    if all(k in obs for k in ENVIRONMENT_STATE_NAMES):
        env = np.array([obs[k] for k in ENVIRONMENT_STATE_NAMES], dtype=np.float32)
    elif fallback_cube_pose is not None:
        env = np.asarray(fallback_cube_pose, dtype=np.float32)
    else:
        raise ValueError("the robot reports no cube pose and none was placed")
    frame = {"observation.state": state, "observation.environment_state": env}
    for key, value in obs.items():
        if isinstance(value, np.ndarray) and value.ndim == 3:
            frame[f"observation.images.{key}"] = value
    return frame


class OperatorKeys:
    """Single-key outcome labels from the terminal (s success, g no grasp, d dropped, m misplaced, t timeout),
    read without blocking while the arm moves; asked for when the episode times out."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self._saved = None

    def __enter__(self):
        try:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.stream)
            tty.setcbreak(self.stream.fileno())
        except Exception:  # not a terminal (a pipe in tests): line-buffered reads still work
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.stream, termios.TCSADRAIN, self._saved)

    def poll(self) -> str | None:
        ready, _, _ = select.select([self.stream], [], [], 0)
        if not ready:
            return None
        return _outcome_of(self.stream.read(1))

    def ask(self) -> str:
        keys = ", ".join(f"{k}={o}" for o, k in OUTCOMES.items())
        while True:
            print(f"\nepisode over: label it ({keys}) ", end="", flush=True)
            ch = self.stream.read(1)
            if ch == "":
                raise EOFError("no operator input: the outcome cannot be labelled")
            label = _outcome_of(ch)
            if label:
                print(label)
                return label


def _outcome_of(ch: str) -> str | None:
    return next((o for o, k in OUTCOMES.items() if k == ch.strip().lower()), None)


def run_episode(robot, policy, condition: Condition, order: int, *, fps: int, max_steps: int,
                cube_z: float = 0.0, operator: OperatorKeys | None = None, record: bool = True,
                keyframes: bool = True) -> Rollout:
    """Run `policy` on `robot` from `condition` (already set up: the twin placed it, the operator placed the real
    cube). Twin robots (with `start_episode`/`outcome`) label themselves; others need `operator`."""
    is_twin = hasattr(robot, "outcome")
    if not is_twin and operator is None:
        raise ValueError("a real robot's outcome is labelled by the operator: pass `operator`")
    policy.reset()
    fallback = placed_pose(condition, cube_z)  # for robots that, like a real arm, report no cube pose
    frames, images = [], []
    label = None
    snap_at = {0, max_steps // 2}
    period = 1.0 / fps
    t_next = time.perf_counter()
    steps = 0
    for t in range(max_steps):
        obs = robot.get_observation()
        frame = observation_frame(obs, fallback)
        step = policy.act(frame)
        sent = robot.send_action(dict(zip(LEROBOT_JOINT_NAMES, step.action.astype(float))))
        steps = t + 1
        if record:
            frames.append({**frame, "action": np.array([sent[k] for k in LEROBOT_JOINT_NAMES], dtype=np.float32),
                           "policy.base_action": step.base.astype(np.float32),
                           "policy.residual": step.residual.astype(np.float32)})
        if keyframes and t in snap_at:
            images.append(_snapshot(robot, frame))
        if is_twin:
            if robot.succeeded or robot.fell:
                break
        else:
            label = operator.poll()
            if label:
                break
            t_next += period
            time.sleep(max(0.0, t_next - time.perf_counter()))
    if keyframes:
        images.append(_snapshot(robot, observation_frame(robot.get_observation(), fallback)))
    if is_twin:
        label = robot.outcome()
    elif label is None:
        label = operator.ask()
    return Rollout(policy.name, condition, order, label, steps, steps / fps, frames,
                   [im for im in images if im is not None])


def _snapshot(robot, frame: dict) -> np.ndarray | None:
    if hasattr(robot, "render"):
        return robot.render()
    cams = [v for k, v in frame.items() if k.startswith("observation.images.")]
    return np.asarray(cams[0]) if cams else None
