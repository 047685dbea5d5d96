"""Thin Dagster asset + check definitions; each calls one framework-free stage in `pipeline/`."""

from assets import bc, demos, report, rl, sim, twin

ALL_ASSETS = [*sim.ASSETS, *demos.ASSETS, *bc.ASSETS, *twin.ASSETS, *rl.ASSETS, *report.ASSETS]
ALL_CHECKS = [*sim.CHECKS, *demos.CHECKS, *bc.CHECKS, *twin.CHECKS, *rl.CHECKS, *report.CHECKS]
ALL_SENSORS = [*demos.SENSORS]
ALL_SCHEDULES = [*demos.SCHEDULES]
