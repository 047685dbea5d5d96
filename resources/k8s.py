"""The Kubernetes deployment profile (`TWINLOOP_DEPLOYMENT=k8s`): the same Definitions, run on a cluster.

  executor   dagster-k8s `k8s_job_executor`: every step is its own Kubernetes Job, from the code location's image
             (resources/k8s/Dockerfile). The steps share the project checkout (params.yaml, dvc.yaml, dvc.lock, the
             DVC cache and the artifact folders) on a ReadWriteMany volume mounted at $TWINLOOP_ROOT, so a step
             reads its upstream's files where they were written, as on one machine.
  GPUs       the GPU stages (`GPU_STAGES`) carry `dagster-k8s/config` op tags requesting `nvidia.com/gpu` = the
             recipe's GPU count for the stage, scheduled onto the GPU node pool (node selector + the NVIDIA taint's
             toleration); they also share the Dagster concurrency pool `gpu` (its limit: GPUs you have).
  storage    Postgres run/event/schedule storage: the instance config resources/k8s/dagster.yaml (Helm:
             resources/k8s/values.yaml).
  DVC        an object-store remote (S3 API: AWS S3, MinIO, Ceph, R2; $TWINLOOP_DVC_REMOTE), pushed after every
             stage commit, credentials from the `twinloop-object-store` Secret; the TWINLOOP_* settings of every
             pod from the `twinloop-settings` ConfigMap.

Nothing here talks to a cluster at import: `dagster definitions validate` checks the profile anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import yaml

PROFILE_ENV = "TWINLOOP_DEPLOYMENT"  # local (default) | k8s
GPU_POOL = "gpu"  # Dagster concurrency pool of the GPU stages
# asset -> the recipe section whose `gpus` it requests (None: one GPU, the stage has no multi-GPU mode)
GPU_STAGES = {"bc_policy": "bc", "gaussian_splat": None, "rl_policy": "rl"}
SETTINGS_CONFIG_MAP = "twinloop-settings"  # the TWINLOOP_* variables of every pod (code server, runs, steps)
OBJECT_STORE_SECRET = "twinloop-object-store"  # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for the DVC remote
DEFAULT_ROOT = "/project"


def profile() -> str:
    name = os.environ.get(PROFILE_ENV, "local") or "local"
    if name not in ("local", "k8s"):
        raise ValueError(f"{PROFILE_ENV}={name!r}: expected 'local' or 'k8s'")
    return name


def recipe_gpus(section: str | None, params: Path | None = None) -> int:
    """`<section>.gpus` from params.yaml (1 when absent): read leniently, so a recipe typo shows up when the stage
    runs (with pipeline.common.recipe's message), not as a code location that fails to load."""
    if section is None:
        return 1
    params = params or Path(os.environ.get("TWINLOOP_ROOT", ".")) / "params.yaml"
    try:
        value = ((yaml.safe_load(params.read_text()) or {}).get(section) or {}).get("gpus", 1)
        return max(1, int(value))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return 1


def gpu_node_selector() -> dict[str, str]:
    """The GPU node pool's label: $TWINLOOP_GPU_NODE_SELECTOR (key=value), default NVIDIA GPU feature discovery's."""
    key, _, value = os.environ.get("TWINLOOP_GPU_NODE_SELECTOR", "nvidia.com/gpu.present=true").partition("=")
    return {key: value}


def gpu_op_tags(asset: str) -> dict:
    """The op tags of a GPU stage: dagster-k8s reads `dagster-k8s/config` when it builds the step's Job (other
    executors ignore it). Requests = limits, so the scheduler places the pod on a node with that many free GPUs."""
    gpus = recipe_gpus(GPU_STAGES[asset])
    resources = {"nvidia.com/gpu": str(gpus), "cpu": str(8 * gpus), "memory": f"{32 * gpus}Gi"}
    return {"dagster-k8s/config": {
        "container_config": {"resources": {"requests": resources, "limits": {"nvidia.com/gpu": str(gpus)}}},
        "pod_spec_config": {
            "node_selector": gpu_node_selector(),
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }}


def executor_config() -> dict:
    """`k8s_job_executor` settings: every step pod mounts the shared project volume and the object-store secret."""
    root = os.environ.get("TWINLOOP_ROOT", DEFAULT_ROOT)
    claim = os.environ.get("TWINLOOP_PROJECT_PVC", "twinloop-project")
    return {
        "volumes": [{"name": "project", "persistentVolumeClaim": {"claimName": claim}}],
        "volume_mounts": [{"name": "project", "mountPath": root}],
        "env_vars": [f"TWINLOOP_ROOT={root}", f"{PROFILE_ENV}=k8s", "HF_HUB_OFFLINE=1", "MUJOCO_GL=egl"],
        "env_config_maps": [SETTINGS_CONFIG_MAP],  # TWINLOOP_DVC_REMOTE, TWINLOOP_DVC_S3_ENDPOINT, ...
        "env_secrets": [OBJECT_STORE_SECRET],
        # CPU stages: modest requests; GPU stages add theirs through op tags (gpu_op_tags)
        "step_k8s_config": {"container_config": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}}}},
        "max_concurrent": int(os.environ.get("TWINLOOP_K8S_MAX_CONCURRENT", "4")),
    }


def k8s_executor() -> dg.ExecutorDefinition:
    """One Kubernetes Job per step (dagster-k8s), configured by `executor_config`."""
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(executor_config(), name="twinloop_k8s_job_executor")
