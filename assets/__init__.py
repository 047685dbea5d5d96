"""Thin Dagster asset + check definitions; each calls one framework-free stage in `pipeline/`."""

from assets import demos, sim

ALL_ASSETS = [*sim.ASSETS, *demos.ASSETS]
ALL_CHECKS = [*sim.CHECKS, *demos.CHECKS]
ALL_SENSORS = [*demos.SENSORS]
