"""The Twinloop asset graph. Assets live in `assets/`, resources in `resources/`; nothing here imports torch.

    sim:   sim_workcell
    data:  demos  (+ demos_inbox_sensor: new batches in data/inbox merged, then the policy chain re-trained;
           nightly_retrain: the policy chain when the demos changed since bc_policy was trained)
    policy: (demos, sim_workcell) -> bc_policy ; (bc_policy, usd_twin) -> rl_policy
    twin:   sim_workcell -> scene_capture -> gaussian_splat -> collision_mesh -> usd_twin (+ demos: replay gap)
    report: (rl_policy, bc_policy, usd_twin) -> eval_report

Deployment ($TWINLOOP_DEPLOYMENT): local (default) or k8s — the same graph; resources/ says what differs.
"""

import dagster as dg

from assets import ALL_ASSETS, ALL_CHECKS, ALL_SCHEDULES, ALL_SENSORS
from resources import deployment_executor, deployment_resources

defs = dg.Definitions(assets=ALL_ASSETS, asset_checks=ALL_CHECKS, sensors=ALL_SENSORS, schedules=ALL_SCHEDULES,
                      resources=deployment_resources(), executor=deployment_executor())
