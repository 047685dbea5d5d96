"""Thin Dagster asset + check definitions; each calls one framework-free stage in `pipeline/`."""

from assets import sim

ALL_ASSETS = [*sim.ASSETS]
ALL_CHECKS = [*sim.CHECKS]
