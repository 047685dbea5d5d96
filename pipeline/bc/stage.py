"""Stage `bc_policy`: behaviour cloning with lerobot's own trainer, resumable, then measured.

The orchestrating process (the Dagster asset, or `twinloop run bc_policy`) only plans the run and swaps the result
into place; the work runs in a child process (`python -m pipeline.bc.stage SPEC`) so the orchestrator never imports
torch or touches CUDA, and stopping the child stops training. The child:

  1. reduces the demos to the features the policy observes (lerobot's `remove_feature`) when they hold more;
  2. runs lerobot's `lerobot-train` entry point in-process with arguments built from `params.yaml` `bc`
     (`lerobot_train_args`: the same arguments reproduce the run with the plain `lerobot-train` command); with
     `bc.gpus` = N > 1, lerobot's own multi-GPU path instead: `accelerate launch --multi_gpu --num_processes N`
     of `python -m pipeline.bc.stage --rank-of SPEC` (lerobot-train in each process, data parallel);
  3. measures the checkpoint (`pipeline.bc.evaluate`): held-out per-joint action error, action-magnitude ratio and
     closed-loop success in the sim workcell with a Wilson interval; writes the plots and metrics.json.

Folders:
  <runs>/bc/<fingerprint>/      kept across interruptions; the fingerprint hashes the `bc` training recipe (not
    spec.json                   `steps`) and the demos' content: the same inputs resume (more steps continue the
                                last checkpoint), changed inputs start fresh
    train_dataset/              the demos reduced to the policy's features (only when a reduction is needed)
    lerobot/                    lerobot-train's --output_dir (checkpoints/NNNNNN, checkpoints/last)
    train_log.jsonl             one line per lerobot log step: loss, grad norm, lr, samples/s
    timings.json                the run's wall-clock figures (reported to Dagster, kept out of the artifact)
  models/bc/                    the result, replaced atomically when everything above succeeded
    pretrained_model/           lerobot's layout (config.json, model.safetensors, train_config.json, processors);
                                train_config.json's paths relative to the project root
    metrics.json, loss.png (loss + held-out per-joint error), rollouts.png, train_log.jsonl (without timings)
    config.json                 the `bc` recipe section and the train / held-out episode split

User guide: docs/bc.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.common.artifacts import (copy_log_without_timings, keep_log_until, portable, read_timings,
                                       remove_other_runs, replace_dir, with_timings, write_config, write_metrics)
from pipeline.common.multi_gpu import launch_on_gpus
from pipeline.common.progress import Reporter
from pipeline.common.recipe import Recipe
from pipeline.demos.stage import DEMOS_REPO_ID

TRAIN_LOG = "train_log.jsonl"


class BcInputError(ValueError):
    """The demos cannot train the configured policy: the message says why."""


@dataclass(frozen=True)
class BcRun:
    """Everything the child process needs; written to `<work_dir>/spec.json`."""

    recipe: dict  # the whole recipe (the child needs `workcell` too, for closed-loop evaluation)
    demos_root: str
    workcell_xml: str
    work_dir: str
    out_dir: str
    device: str  # auto | cpu | cuda, resolved in the child
    train_episodes: list[int]
    held_out_episodes: list[int]

    @property
    def spec_path(self) -> Path:
        return Path(self.work_dir) / "spec.json"

    @property
    def staging(self) -> Path:
        """Where the child builds the result (`replace_dir` swaps it in once complete)."""
        out = Path(self.out_dir)
        return out.with_name(out.name + ".partial")

    @property
    def lerobot_dir(self) -> Path:
        return Path(self.work_dir) / "lerobot"

    @property
    def last_checkpoint(self) -> Path:
        return self.lerobot_dir / "checkpoints" / "last"

    def parsed_recipe(self) -> Recipe:
        return Recipe.model_validate(self.recipe)

    @staticmethod
    def load(spec_path: str | Path) -> BcRun:
        return BcRun(**json.loads(Path(spec_path).read_text()))


# --- orchestrator side (no torch) ---------------------------------------------------------------------------------
def demos_fingerprint(demos_root: Path) -> str:
    """md5 over the dataset's metadata and data files: changes whenever an episode is added or edited."""
    digest = hashlib.md5()
    for path in sorted(p for sub in ("meta", "data") for p in (demos_root / sub).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(demos_root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def plan_run(recipe: Recipe, demos_root: Path, workcell_xml: Path, out_dir: Path, runs_root: Path,
             device: str = "auto") -> BcRun:
    """Check the demos fit the `bc` recipe, pick the work folder (resume or fresh) and write its spec."""
    cfg = recipe.bc
    demos_root, runs_root = Path(demos_root).resolve(), Path(runs_root).resolve()
    info_path = demos_root / "meta" / "info.json"
    if not info_path.is_file():
        raise BcInputError(f"no demos at {demos_root}: materialize the `demos` asset first")
    info = json.loads(info_path.read_text())
    features, n_episodes = info["features"], int(info["total_episodes"])
    missing = [key for key in cfg.observations if key not in features]
    if missing:
        have = sorted(k for k in features if k.startswith("observation."))
        raise BcInputError(f"the demos have no {missing} (they have {have}); set bc.observations to features they hold")
    if n_episodes < cfg.held_out_episodes + 1:
        raise BcInputError(f"{n_episodes} demo episodes cannot hold out {cfg.held_out_episodes} and still train; "
                           "record more or lower bc.held_out_episodes")
    if not Path(workcell_xml).is_file():
        raise BcInputError(f"no compiled workcell at {workcell_xml}: materialize `sim_workcell` (closed-loop eval)")

    fingerprint = hashlib.md5(f"{cfg.training_fingerprint()}:{demos_fingerprint(demos_root)}".encode()).hexdigest()
    runs = runs_root / "bc"
    remove_other_runs(runs / fingerprint[:12])  # another recipe or other demos: never resumable
    split = n_episodes - cfg.held_out_episodes
    run = BcRun(recipe=recipe.model_dump(mode="json"), demos_root=str(demos_root), workcell_xml=str(workcell_xml),
                work_dir=str(runs / fingerprint[:12]), out_dir=str(Path(out_dir).resolve()), device=device,
                train_episodes=list(range(split)), held_out_episodes=list(range(split, n_episodes)))
    if _checkpoint_step(run.last_checkpoint) > cfg.steps:  # trained further than now asked: start over
        shutil.rmtree(run.work_dir)
    Path(run.work_dir).mkdir(parents=True, exist_ok=True)
    run.spec_path.write_text(json.dumps(asdict(run), indent=2))
    return run


def child_command(run: BcRun) -> list[str]:
    """The child process that trains and measures (see the module docstring)."""
    return [sys.executable, "-m", "pipeline.bc.stage", str(run.spec_path)]


def finish_run(run: BcRun) -> dict:
    """Swap the finished staging folder into `out_dir`; returns its metrics."""
    staging = run.staging
    if not (staging / "metrics.json").is_file():
        raise RuntimeError(f"the BC child process left no metrics in {staging}; see its log above")
    metrics = json.loads((staging / "metrics.json").read_text())
    write_config(staging, {"bc": run.recipe["bc"], "train_episodes": run.train_episodes,
                           "held_out_episodes": run.held_out_episodes})
    replace_dir(staging, Path(run.out_dir))
    return with_timings(metrics, read_timings(Path(run.work_dir) / "timings.json"))


def build_bc_policy(recipe: Recipe, demos_root: Path, workcell_xml: Path, out_dir: Path, runs_root: Path,
                    device: str = "auto") -> dict:
    """The whole stage without Dagster: plan, run the child (inheriting stdout/stderr), finish."""
    run = plan_run(recipe, demos_root, workcell_xml, out_dir, runs_root, device)
    result = subprocess.run(child_command(run), check=False)
    if result.returncode != 0:
        raise RuntimeError(f"BC training exited with status {result.returncode}; a rerun resumes from "
                           f"{run.last_checkpoint} if a checkpoint was written")
    return finish_run(run)


# --- child side -------------------------------------------------------------------------------------------------
def lerobot_train_args(run: BcRun, dataset_root: Path, device: str) -> list[str]:
    """`lerobot-train` arguments for this run: fresh, or `--resume` from the last checkpoint of the same inputs."""
    cfg = run.parsed_recipe().bc
    if run.last_checkpoint.is_dir():
        # More steps than the checkpoint was trained for: the cosine schedule is stretched to the new total (the
        # rate picks up where the longer schedule would be), instead of staying at its final value.
        return [f"--config_path={run.last_checkpoint / 'pretrained_model' / 'train_config.json'}", "--resume=true",
                f"--steps={cfg.steps}", f"--scheduler.num_decay_steps={cfg.steps}"]
    args = [
        f"--dataset.repo_id={DEMOS_REPO_ID}",
        f"--dataset.root={dataset_root}",
        f"--dataset.episodes={json.dumps(run.train_episodes)}",
        f"--policy.path={cfg.pretrained_path}" if cfg.pretrained_path else f"--policy.type={cfg.policy}",
        f"--policy.device={device}",
        "--policy.push_to_hub=false",
        f"--output_dir={run.lerobot_dir}",
        f"--job_name=twinloop_bc_{cfg.policy}",
        f"--steps={cfg.steps}",
        f"--batch_size={cfg.batch_size}",
        f"--num_workers={cfg.num_workers}",
        f"--seed={cfg.seed}",
        f"--log_freq={cfg.log_freq}",
        f"--save_freq={cfg.save_freq}",
        "--wandb.enable=false",
        "--use_policy_training_preset=false",
        "--optimizer.type=adamw",
        f"--optimizer.lr={cfg.lr}",
        f"--optimizer.weight_decay={cfg.weight_decay}",
        f"--optimizer.grad_clip_norm={cfg.grad_clip_norm}",
        "--scheduler.type=cosine_decay_with_warmup",
        f"--scheduler.num_warmup_steps={cfg.warmup_steps}",
        f"--scheduler.num_decay_steps={cfg.steps}",
        f"--scheduler.peak_lr={cfg.lr}",
        f"--scheduler.decay_lr={cfg.lr_final}",
    ]
    for key, value in cfg.policy_options.get(cfg.policy, {}).items():
        args.append(f"--policy.{key}={json.dumps(value) if not isinstance(value, str) else value}")
    return args


class _TrainLogTap(logging.Filter):
    """Copies every lerobot training log step (a `MetricsTracker` logged on the root logger) to a JSONL file.

    A filter, not a handler: lerobot's `init_logging` clears the root logger's handlers but keeps its filters."""

    def __init__(self, path: Path, reporter: Reporter):
        super().__init__()
        self.path, self.reporter = path, reporter

    def filter(self, record: logging.LogRecord) -> bool:
        from lerobot.utils.logging_utils import MetricsTracker

        if isinstance(record.msg, MetricsTracker):
            row = {k: float(v) for k, v in record.msg.to_dict().items()}
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.reporter.info(f"step {int(row['steps'])}: loss {row['loss']:.4f}, {row['samples_per_s']:.0f} samples/s")
        return True


def training_dataset(run: BcRun) -> Path:
    """The demos themselves, or a copy reduced to the policy's observations + action (lerobot's remove_feature)."""
    from lerobot.datasets.dataset_tools import remove_feature
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    observed = set(run.parsed_recipe().bc.observations) | {"action"}
    meta = LeRobotDatasetMetadata(DEMOS_REPO_ID, root=run.demos_root)
    extra = [k for k, f in meta.features.items() if k not in observed and (k.startswith("observation.") or
                                                                           f["dtype"] in ("video", "image"))]
    if not extra:
        return Path(run.demos_root)
    reduced = Path(run.work_dir) / "train_dataset"
    if not (reduced / "meta" / "info.json").is_file():
        shutil.rmtree(reduced, ignore_errors=True)
        remove_feature(LeRobotDataset(DEMOS_REPO_ID, root=run.demos_root), extra, output_dir=reduced,
                       repo_id=DEMOS_REPO_ID)
    return reduced


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("compute device 'cuda' requested but torch finds no CUDA device here")
    return "cuda" if requested in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def train_and_measure(run: BcRun, reporter: Reporter) -> dict:
    from pipeline.bc import evaluate as bc_eval

    device = resolve_device(run.device)
    log_path = Path(run.work_dir) / TRAIN_LOG
    resumed_from = _checkpoint_step(run.last_checkpoint)
    if not resumed_from:  # killed before its first checkpoint: lerobot refuses to start over an existing folder
        shutil.rmtree(run.lerobot_dir, ignore_errors=True)
    # Log lines written after the checkpoint by an interrupted run are about to be trained (and logged) again.
    keep_log_until(log_path, resumed_from, key="steps")
    reporter.info(f"BC: {'resuming from step ' + str(resumed_from) if resumed_from else 'fresh run'} on {device}, "
                  f"work folder {run.work_dir}")
    dataset_root = training_dataset(run)
    args = lerobot_train_args(run, dataset_root, device)
    (Path(run.work_dir) / "lerobot_train_args.txt").write_text("\n".join(args) + "\n")
    gpus = run.parsed_recipe().bc.gpus
    if gpus > 1:
        launch_data_parallel(run, gpus, device)
    else:
        run_lerobot_train(args, log_path, reporter)
    checkpoint = run.last_checkpoint.resolve() / "pretrained_model"
    staging = run.staging
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copytree(checkpoint, staging / "pretrained_model")
    # The artifact names no checkout path and no wall-clock figure (its md5 depends on its inputs only); the work
    # folder keeps the raw log and arguments. The child runs in the project root: paths are made relative to it.
    root = Path.cwd()
    _make_train_config_portable(staging / "pretrained_model" / "train_config.json", root)
    copy_log_without_timings(log_path, staging / TRAIN_LOG)
    reporter.info("BC: measuring the checkpoint (held-out error, closed-loop sim episodes)")
    metrics = bc_eval.measure(run, staging, dataset_root, device, train_log_path=log_path, log=reporter.info)
    metrics |= {"resumed_from_step": resumed_from, "device": device,
                "lerobot_train_args": [arg.replace(f"{root.resolve()}/", "") for arg in args]}
    timings = write_metrics(staging, metrics)
    (Path(run.work_dir) / "timings.json").write_text(json.dumps(timings, indent=2))
    return metrics


def _make_train_config_portable(path: Path, root: Path) -> None:
    """lerobot saves absolute dataset and output paths in train_config.json; inside the artifact they are written
    relative to the project root (the resumable copy in `runs/` keeps lerobot's own)."""
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if config.get("output_dir"):
        config["output_dir"] = portable(config["output_dir"], root)
    if isinstance(config.get("dataset"), dict) and config["dataset"].get("root"):
        config["dataset"]["root"] = portable(config["dataset"]["root"], root)
    path.write_text(json.dumps(config, indent=4))


def run_lerobot_train(args: list[str], log_path: Path, reporter: Reporter | None) -> None:
    """lerobot-train in this process, its log steps copied to `log_path` (skipped when reporter is None)."""
    from lerobot.scripts import lerobot_train

    tap = _TrainLogTap(log_path, reporter) if reporter is not None else None
    if tap:
        logging.getLogger().addFilter(tap)
    argv = sys.argv
    try:
        sys.argv = ["lerobot-train", *args]
        lerobot_train.main()
    finally:
        sys.argv = argv
        if tap:
            logging.getLogger().removeFilter(tap)


def launch_data_parallel(run: BcRun, gpus: int, device: str) -> None:
    """lerobot's multi-GPU training: one lerobot-train process per GPU under `accelerate launch --multi_gpu`
    (DDP; each process draws its own shard of every batch, so the effective batch is batch_size x gpus)."""
    launch_on_gpus([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={gpus}",
                    "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "-m", "pipeline.bc.stage",
                    "--rank-of", str(run.spec_path)], "bc.gpus", gpus, device, RuntimeError)


def train_rank(run: BcRun) -> None:
    """One process of `launch_data_parallel`: lerobot-train with the arguments the launcher wrote; the main
    process (RANK 0) keeps the training log."""
    args = (Path(run.work_dir) / "lerobot_train_args.txt").read_text().split("\n")
    main_process = os.environ.get("RANK", "0") == "0"
    run_lerobot_train([a for a in args if a], Path(run.work_dir) / TRAIN_LOG, Reporter() if main_process else None)


def _checkpoint_step(checkpoint: Path) -> int:
    step_file = checkpoint / "training_state" / "training_step.json"
    return int(json.loads(step_file.read_text())["step"]) if step_file.is_file() else 0


def main(argv: list[str] | None = None, reporter: Reporter | None = None) -> int:
    """The child: train and measure the run in `argv[0]` (its spec.json); `reporter`: plain log lines unless the
    orchestrator passes its own (Dagster Pipes, `assets/pipes_child.py`)."""
    argv = argv if argv is not None else sys.argv[1:]
    if argv[0] == "--rank-of":  # one process of a multi-GPU run (see launch_data_parallel)
        train_rank(BcRun.load(argv[1]))
        return 0
    run = BcRun.load(argv[0])
    reporter = reporter or Reporter()
    try:
        metrics = train_and_measure(run, reporter)
    except BaseException as exc:
        reporter.close(exc)
        raise
    reporter.materialized({k: metrics[k] for k in ("final_loss", "train_steps", "samples_per_s",
                                                   "sim_success_rate", "action_magnitude_ratio")})
    reporter.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # datasets and weights are local files; never wait on the Hub
    sys.exit(main())
