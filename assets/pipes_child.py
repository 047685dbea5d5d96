"""The child side of Dagster Pipes for the stages that train in their own process (bc_policy, rl_policy).

    python -m assets.pipes_child pipeline.bc.stage SPEC     # what the bc_policy asset launches
    python -m assets.pipes_child pipeline.rl.stage ARGS...  # what the rl_policy asset launches

Runs the stage module's `main(argv, reporter=...)` with a reporter whose log lines and final figures travel
through Pipes to the asset's run (the same `main` prints them when launched directly)."""

from __future__ import annotations

import importlib
import os
import sys

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

from pipeline.common.progress import Reporter


class PipesReporter(Reporter):
    """Log lines to the Dagster run (and stdout, which Dagster keeps as the compute log); `materialized` becomes
    the asset materialization's metadata."""

    def __init__(self):
        self._context = self._pipes = None
        if DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ:
            self._context = open_dagster_pipes()
            self._pipes = self._context.__enter__()

    def info(self, message: str) -> None:
        if self._pipes is not None:
            self._pipes.log.info(message)
        super().info(message)

    def materialized(self, metadata: dict) -> None:
        if self._pipes is not None:
            self._pipes.report_asset_materialization(metadata=metadata)

    def close(self, error: BaseException | None = None) -> None:
        if self._context is not None:
            self._context.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)


def pipes_command(command: list[str]) -> list[str]:
    """`python -m MODULE ARGS` -> the same through this wrapper."""
    python, flag, module, *args = command
    if flag != "-m":
        raise ValueError(f"expected a `python -m MODULE` command, got {command}")
    return [python, "-m", __name__, module, *args]


def main(argv: list[str]) -> int:
    module, *args = argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # datasets and weights are local files; never wait on the Hub
    return importlib.import_module(module).main(args, reporter=PipesReporter())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
