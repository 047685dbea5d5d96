"""Where every stage writes: declared once here and read by the assets, the CLI, the stages' argparse defaults and
`dvc.yaml` (a test compares them). Paths are relative to the project root."""

STAGE_DIRS = {
    "sim_workcell": "models/workcell",
    "demos": "data/demos",
    "bc_policy": "models/bc",
    "scene_capture": "data/capture",
    "gaussian_splat": "models/splat",
    "collision_mesh": "models/mesh",
    "usd_twin": "models/twin",
    "rl_policy": "models/rl",
    "eval_report": "reports/eval",
}
INBOX_DIR = "data/inbox"  # new demo batches wait here (git- and DVC-ignored)
RUNS_DIR = "runs"  # resumable training work folders (git- and DVC-ignored)
TIMINGS_DIR = "timings"  # wall-clock and host facts per stage: DVC metrics (cache: false), outside the outputs
CONFIG_FILE = "config.json"  # every stage's settings, beside its outputs


def timings_file(stage: str) -> str:
    """The DVC metrics file holding a stage's timings (kept out of its output folder so the output's md5 does not
    change from one run to the next)."""
    return f"{TIMINGS_DIR}/{stage}.json"
