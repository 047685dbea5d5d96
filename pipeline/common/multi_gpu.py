"""One launcher for the stages' multi-GPU runs: BC's `accelerate launch` and RL's `torchrun`."""

from __future__ import annotations

import os
import subprocess


def launch_on_gpus(command: list[str], setting: str, gpus: int, device: str, error: type[Exception]) -> None:
    """Run a multi-process launcher (accelerate, torchrun) for `gpus` GPUs; refused before it starts when this
    machine has fewer. Only the calling process speaks Dagster Pipes; the ranks report as plain log lines."""
    import torch

    have = torch.cuda.device_count()
    if device != "cuda" or have < gpus:
        raise error(f"{setting} is {gpus}, but torch sees {have} CUDA device(s) here (device {device}): set {setting} "
                    "to at most that, or run with --device cuda on a machine with that many GPUs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    print(f"{setting} = {gpus}: {' '.join(command)}", flush=True)
    if subprocess.run(command, env=env, check=False).returncode != 0:
        raise error(f"the {gpus}-GPU run failed (see the ranks' output above); a rerun resumes from its last "
                    "checkpoint")
