"""Dagster resources: what differs between deployments (paths, DVC remote, compute device, robot connection)."""

import os

import dagster as dg

from resources.compute import ComputeDevice
from resources.dvc import DVC_POOL, DvcResource
from resources.paths import ProjectPaths
from resources.robot import RobotConnection

__all__ = ["ComputeDevice", "DVC_POOL", "DvcResource", "ProjectPaths", "RobotConnection", "default_resources"]


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
