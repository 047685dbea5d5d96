"""The whole default DAG on CPU, then a no-op re-run and a new-demos re-run, in a fresh clone — one command.

    .venv/bin/python bench/dag_cpu.py --workdir /tmp/twinloop-dag-bench            # default: 2 cores, 8 new demos

1. `git clone` of this repository's committed HEAD into --workdir (nothing materialized, its own DAGSTER_HOME, its
   own DVC remote folder), pinned to --cores CPU cores (sched_setaffinity; children inherit it);
2. whole DAG: `dagster asset materialize --select '*'` on the default recipe (what `make demo` runs), with every
   step's duration read back from the run's event log;
3. no-op re-run: `twinloop materialize` (stale assets only) right after — it must find nothing to do;
4. new demos: --new-episodes recorded by the sim expert with another seed into `data/inbox/<batch>` (not timed: on
   a real cell that is the operator's time), then the inbox sensor's run exactly as the daemon would launch it (its
   selection, its run config): the batch screened and merged, then bc_policy -> rl_policy -> eval_report.

Prints the three wall times and their ratios to the whole DAG, plus each step's time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _run(command: list[str], cwd: Path, env: dict, log: Path) -> float:
    """Run a command, its output appended to `log`; returns wall seconds; raises with the log's tail on failure."""
    t = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(command)}\n")
        f.flush()
        code = subprocess.call(command, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t
    if code != 0:
        tail = log.read_text().splitlines()[-40:]
        raise SystemExit(f"`{' '.join(command)}` failed (exit {code}) after {seconds:.0f} s:\n" + "\n".join(tail))
    return seconds


def step_seconds(dagster_home: Path) -> dict[str, float]:
    """Each step's duration in the instance's latest run (STEP_START -> STEP_SUCCESS)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_runs(limit=1)[0]
        starts, durations = {}, {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                starts[event.step_key] = entry.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS and event.step_key in starts:
                durations[event.step_key] = entry.timestamp - starts[event.step_key]
        return durations


def record_batch(workdir: Path, batch: Path, episodes: int, seed: int) -> None:
    """New demos from the sim expert (another seed than the default demos), as a LeRobot dataset in the inbox."""
    script = ("import sys; from pathlib import Path; from pipeline.common.recipe import load_recipe; "
              "from pipeline.demos.stage import build_demos; r = load_recipe('params.yaml'); "
              f"r = r.model_copy(update={{'demos': r.demos.model_copy(update={{'seed': {seed}, 'episodes': {episodes}}})}}); "
              f"print(build_demos(r, Path({str(batch)!r}), workcell_xml=Path('models/workcell/workcell.xml')))")
    subprocess.run([sys.executable, "-c", script], cwd=workdir, check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/twinloop-dag-bench"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--new-episodes", type=int, default=8)
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < args.cores:
        print(f"note: only {len(cores)} cores available, not {args.cores}")
    os.sched_setaffinity(0, cores[:args.cores])
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    subprocess.run(["git", "clone", "-q", str(REPO), str(args.workdir)], check=True)
    work = args.workdir
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work, capture_output=True, text=True).stdout
    params = work / "params.yaml"  # its own remote, beside the clone (the default points at ../twinloop-dvc-store)
    params.write_text(params.read_text().replace("dvc_remote: ../twinloop-dvc-store", "dvc_remote: ../dvc-store"))
    home = work / ".dagster_home"
    home.mkdir()
    shutil.copy(work / "resources" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "HF_HUB_OFFLINE": "1", "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "PYTHONPATH": str(work)}
    log = work.parent / f"{work.name}.log"
    log.write_text(f"code {commit}, cores {os.sched_getaffinity(0)}\n")
    print(f"fresh clone at {commit.strip()} in {work}; {len(os.sched_getaffinity(0))} cores; log {log}", flush=True)

    dagster = [str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "assets.definitions"]
    whole = _run([*dagster, "--select", "*"], work, env, log)
    whole_steps = step_seconds(home)
    print(f"whole DAG: {whole:.0f} s", flush=True)

    noop = _run([str(VENV_BIN / "twinloop"), "materialize"], work, env, log)
    if "nothing to materialize" not in log.read_text().splitlines()[-1]:
        raise SystemExit("the no-op re-run found something to materialize: " + log.read_text().splitlines()[-1])
    print(f"no-op re-run: {noop:.1f} s", flush=True)

    batch = "bench-batch"
    t = time.perf_counter()
    record_batch(work, work / "data" / "inbox" / batch, args.new_episodes, seed=1)
    print(f"recorded {args.new_episodes} new demos into data/inbox/{batch} ({time.perf_counter() - t:.0f} s, "
          "not timed)", flush=True)
    sensor_run = [*dagster, "--select", "demos,bc_policy,rl_policy,eval_report",  # demos_inbox_sensor's selection
                  "--config-json", json.dumps({"ops": {"demos": {"config": {"inbox_batch": batch}}}})]
    new_demos = _run(sensor_run, work, env, log)
    new_steps = step_seconds(home)
    print(f"new-demos re-run: {new_demos:.0f} s", flush=True)

    print(f"\ncode {commit.strip()}, {len(os.sched_getaffinity(0))} CPU cores, default recipe")
    print(f"{'':28s}{'wall s':>10s}{'ratio to whole DAG':>22s}")
    for name, seconds in (("whole DAG", whole), ("no-op re-run", noop), (f"new demos (+{args.new_episodes})",
                                                                          new_demos)):
        print(f"{name:28s}{seconds:10.1f}{seconds / whole:22.3f}")
    print("\nsteps (s):  whole DAG | new demos")
    for step in whole_steps:
        again = new_steps.get(step)
        print(f"  {step:26s}{whole_steps[step]:9.0f} | {'' if again is None else f'{again:.0f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
