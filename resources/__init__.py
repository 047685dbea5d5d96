"""Dagster resources: what differs between deployments (paths, DVC remote, compute device, robot connection).

Two profiles of the same Definitions, picked by $TWINLOOP_DEPLOYMENT: `local` (default: one machine, the in-process
multiprocess executor) and `k8s` (resources/k8s.py: a Kubernetes Job per step, GPU requests, Postgres storage, an
object-store DVC remote).
"""

import os

import dagster as dg

from resources.compute import ComputeDevice
from resources.dvc import DVC_POOL, DvcResource
from resources.k8s import DEFAULT_ROOT, GPU_POOL, gpu_op_tags, k8s_executor, profile
from resources.paths import ProjectPaths
from resources.robot import RobotConnection

__all__ = ["ComputeDevice", "DVC_POOL", "DvcResource", "GPU_POOL", "ProjectPaths", "RobotConnection",
           "default_resources", "deployment_executor", "deployment_resources", "gpu_op_tags"]


def default_resources(root: str | None = None) -> dict:
    """The resources of a local deployment rooted at `root` (default: $TWINLOOP_ROOT or the current directory)."""
    paths = ProjectPaths(root=root or os.environ.get("TWINLOOP_ROOT", "."))
    return {
        "paths": paths,
        "dvc": DvcResource(paths=paths),
        "compute": ComputeDevice(),
        "robot": RobotConnection(),
        # child processes that report back through Dagster Pipes (training); SIGINT on cancel
        "pipes_subprocess": dg.PipesSubprocessClient(),
    }


def k8s_resources() -> dict:
    """The cluster's: the project on the shared volume, DVC pushing to the object store ($TWINLOOP_DVC_REMOTE,
    required when a stage commits; read when the step runs, not at load)."""
    resources = default_resources(os.environ.get("TWINLOOP_ROOT", DEFAULT_ROOT))
    resources["dvc"] = DvcResource(paths=resources["paths"], remote_url=dg.EnvVar("TWINLOOP_DVC_REMOTE"),
                                   s3_endpoint_url=os.environ.get("TWINLOOP_DVC_S3_ENDPOINT", ""))
    return resources


def deployment_resources() -> dict:
    return k8s_resources() if profile() == "k8s" else default_resources()


def deployment_executor() -> dg.ExecutorDefinition | None:
    """None: Dagster's default (multiprocess) executor."""
    return k8s_executor() if profile() == "k8s" else None
