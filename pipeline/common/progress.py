"""How a stage's child process reports back: log lines and, once done, its headline figures.

The stages print; the Dagster layer runs the same children through `assets/pipes_child.py`, whose reporter speaks
Dagster Pipes instead (so nothing in `pipeline/` imports Dagster)."""

from __future__ import annotations


class Reporter:
    """Plain log lines on stdout; `materialized` and `close` are for reporters that talk to an orchestrator."""

    def info(self, message: str) -> None:
        print(message, flush=True)

    def materialized(self, metadata: dict) -> None:
        pass

    def close(self, error: BaseException | None = None) -> None:
        pass
