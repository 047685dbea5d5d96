"""Thin Dagster asset + check definitions; each calls one framework-free stage in `pipeline/`."""

from assets import bc, demos, sim, twin

ALL_ASSETS = [*sim.ASSETS, *demos.ASSETS, *bc.ASSETS, *twin.ASSETS]
ALL_CHECKS = [*sim.CHECKS, *demos.CHECKS, *bc.CHECKS, *twin.CHECKS]
ALL_SENSORS = [*demos.SENSORS]
