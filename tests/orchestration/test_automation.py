"""New demos -> the inbox sensor's run re-trains the policy chain (bc_policy -> rl_policy -> eval_report) and never
the twin chain; the nightly schedule then has nothing to do. A small state-only project: lerobot's merge of
datasets *with videos* currently leaves the new episodes' frames out of the merged video file (found by this
test; see the README's known constraints), so the demos here carry state and actions only."""

import hashlib
import json
import os
import time

import dagster as dg
import yaml

from tests_helpers import PRIOR_TWIN_SERVO_RANGES


def _folder_md5(folder):
    digest = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_new_demos_retrain_only_the_policy_chain(tmp_path, recorded, small_recipe, workcell_xml, synthetic_twin,
                                                 tiny_project):
    from assets import ALL_ASSETS, ALL_CHECKS
    from assets.demos import demos, demos_inbox_sensor, demos_quality, nightly_retrain
    from pipeline.demos.checks import DemoData
    from pipeline.demos.stage import build_demos, write_state_only
    from pipeline.common.lineage import trace
    from resources import ProjectPaths, default_resources

    project = tiny_project(tmp_path / "project", {
        "workcell": {"cameras": {"width": 64, "height": 48}},
        "demos": {"source": "local", "local_path": str(recorded), "state_only": True, "episodes": 2,
                  "checks": {"min_episodes": 2}},
        "bc": {"steps": 4, "save_freq": 2, "log_freq": 1, "batch_size": 4, "held_out_episodes": 1, "eval_episodes": 2},
        "rl": {"num_envs": 2, "iterations": 1, "steps_per_env": 2, "eval_episodes": 2, "episode_seconds": 0.5,
               "randomization": PRIOR_TWIN_SERVO_RANGES},
        "eval": {"pairs": 1, "episode_seconds": 0.5, "failure_examples": 1},
        "project": {"dvc_remote": ""},
    }, models={"models/workcell": workcell_xml.parent, "models/twin": synthetic_twin["path"].parent})
    resources = default_resources(str(project))
    assert dg.materialize([demos, demos_quality], resources=resources).success
    twin_before = _folder_md5(project / "models" / "twin")

    recording = tmp_path / "recording"  # two new episodes (another seed), delivered state-only to the inbox
    build_demos(small_recipe.model_copy(update={"demos": small_recipe.demos.model_copy(update={"seed": 7})}),
                recording, workcell_xml=workcell_xml)
    batch = project / "data" / "inbox" / "batch-002"
    write_state_only(DemoData.load(recording), batch)
    old = time.time() - 60
    for path in [batch, *batch.rglob("*")]:
        os.utime(path, (old, old), follow_symlinks=False)
    with dg.build_sensor_context(resources=resources) as context:
        [request] = list(demos_inbox_sensor(context))
    result = dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=demos_inbox_sensor.asset_selection,
                            resources=resources, run_config=request.run_config)
    assert result.success
    made = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert made == {"demos", "bc_policy", "rl_policy", "eval_report"}  # from the run's materialization events
    assert _folder_md5(project / "models" / "twin") == twin_before  # the twin chain untouched
    assert json.loads((project / "data" / "demos" / "meta" / "info.json").read_text())["total_episodes"] == 4
    report = result.asset_materializations_for_node("eval_report")[0]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert report.metadata["upstream_md5"].value["models/rl"] == lock["rl_policy"]["outs"][0]["md5"]
    assert report.metadata["code_commit"].value
    lineage = trace(project, "reports/eval")
    chain = {"demos", "bc_policy", "rl_policy", "eval_report"}
    assert chain <= {link.stage for link in lineage.links}
    # sim_workcell and usd_twin were copied in, never materialized here: links to them read "records None"
    assert not [p for p in lineage.problems if p.split(":")[0] in chain and "now records None" not in p], \
        lineage.problems
    assert (project / "reports" / "eval" / "report.html").is_file()
    # the nightly schedule: bc_policy was trained on the current demos, so nothing to do
    with dg.build_schedule_context() as context:
        decision = nightly_retrain(context, paths=ProjectPaths(root=str(project)))
    assert isinstance(decision, dg.SkipReason)
