"""The two policies an evaluation compares, behind one interface: `reset()` per episode, `act(frame)` per step.

`frame` is one observation as lerobot records it (`observation.state`, `observation.environment_state`, in so101
units); `act` returns the joint targets to send and the parts they were made of (BC's action and the residual), so
a rollout records both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class PolicyError(ValueError):
    """A policy folder cannot be used for this evaluation (the message says why)."""


@dataclass
class Step:
    action: np.ndarray  # [6] so101 units: what goes to the robot
    base: np.ndarray  # [6] the BC policy's action
    residual: np.ndarray  # [6] the residual actor's output after the clip (zeros for BC alone)


class BCPolicy:
    """The frozen BC checkpoint, run exactly as lerobot runs it on a robot (select_action, temporal ensemble)."""

    name = "bc"
    label = "BC alone"

    def __init__(self, checkpoint: Path, device: str = "cpu", task: str = ""):
        from pipeline.bc.evaluate import LerobotPolicy

        if not (Path(checkpoint) / "config.json").is_file():
            raise PolicyError(f"no lerobot checkpoint at {checkpoint}: materialize `bc_policy` first")
        self.bc = LerobotPolicy(Path(checkpoint), device)
        self.task = task

    def reset(self) -> None:
        self.bc.reset()

    def act(self, frame: dict[str, np.ndarray]) -> Step:
        base = self.bc.act(frame, self.task).astype(np.float64)
        return Step(base, base, np.zeros(6))


class ResidualPolicy:
    """BC + alpha * clip(residual): the policy an `rl_policy` folder describes in its `policy_manifest.json`.

    The residual actor (TorchScript, its observation normalizer inside) sees what the env's actor saw in training:
    joints / 100, the BC action / 100, and the previous (clipped) residual."""

    name = "bc_residual"
    label = "BC + residual"

    def __init__(self, rl_dir: Path, bc_checkpoint: Path, device: str = "cpu", task: str = ""):
        import torch

        from pipeline.common.artifacts import file_md5

        rl_dir = Path(rl_dir)
        manifest_path = rl_dir / "policy_manifest.json"
        if not manifest_path.is_file():
            raise PolicyError(f"no {manifest_path}: materialize `rl_policy` first")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("kind") != "bc+residual":
            raise PolicyError(f"{manifest_path} describes a {self.manifest.get('kind')!r} policy, not bc+residual")
        bc_md5 = file_md5(Path(bc_checkpoint) / "model.safetensors")
        if self.manifest["bc_model_md5"] != bc_md5:
            raise PolicyError(f"{rl_dir} was trained on the BC checkpoint with md5 {self.manifest['bc_model_md5']}, "
                              f"but {bc_checkpoint} has {bc_md5}: re-materialize `rl_policy` on the current BC")
        self.base = BCPolicy(bc_checkpoint, device, task)
        self.actor = torch.jit.load(str(rl_dir / self.manifest["residual_actor"]), map_location=device).eval()
        self.device = device
        self.alpha = float(self.manifest["alpha"])
        self.clip = float(self.manifest["residual_clip"])
        self.actor_md5 = file_md5(rl_dir / self.manifest["residual_actor"])
        self.previous = np.zeros(6)

    def reset(self) -> None:
        self.base.reset()
        self.previous = np.zeros(6)

    def act(self, frame: dict[str, np.ndarray]) -> Step:
        import torch

        base = self.base.act(frame).base
        joints = np.asarray(frame["observation.state"], dtype=np.float64)
        obs = np.concatenate([joints / 100, base / 100, self.previous])
        with torch.inference_mode():
            out = self.actor(torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None])
        residual = np.clip(out[0].double().cpu().numpy(), -self.clip, self.clip)
        self.previous = residual
        return Step(base + self.alpha * residual, base, residual)
