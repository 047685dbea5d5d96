"""pipeline.common.artifacts: what keeps an artifact's bytes a function of its inputs (no wall-clock figures, no
checkout paths) and the md5 every stage records."""

import hashlib
import json

from pipeline.common.artifacts import (copy_log_without_timings, file_md5, portable, split_timings, with_timings,
                                       write_config, write_metrics)


def test_timings_are_split_out_at_every_depth_and_merge_back():
    metrics = {"success_rate": 0.5, "seconds": 12.3, "build_seconds": 1.0, "cycle_time_s": {"mean": 3.0},
               "settle": {"simulated_s": 2.0, "seconds_wall": 4.1, "objects": {"cube": {"drift_mm": 0.2}}},
               "train_env_steps_per_s": 900.0, "training_curve": {"mean_reward": [[0, 1.0]],
                                                                   "env_steps_per_s": [[0, 800.0]]}}
    kept, timings = split_timings(metrics)
    assert kept == {"success_rate": 0.5, "cycle_time_s": {"mean": 3.0},
                    "settle": {"simulated_s": 2.0, "objects": {"cube": {"drift_mm": 0.2}}},
                    "training_curve": {"mean_reward": [[0, 1.0]]}}
    assert timings == {"seconds": 12.3, "build_seconds": 1.0, "settle": {"seconds_wall": 4.1},
                       "train_env_steps_per_s": 900.0, "training_curve": {"env_steps_per_s": [[0, 800.0]]}}
    assert with_timings(kept, timings) == metrics


def test_metrics_and_config_files(tmp_path):
    timings = write_metrics(tmp_path, {"psnr_db": 30.1, "seconds": 5.0})
    assert timings == {"seconds": 5.0}
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"psnr_db": 30.1}
    write_config(tmp_path, {"b": 1, "a": {"y": 2, "x": 1}})
    first = (tmp_path / "config.json").read_bytes()
    write_config(tmp_path, {"a": {"x": 1, "y": 2}, "b": 1})  # same settings, other key order: same bytes
    assert (tmp_path / "config.json").read_bytes() == first


def test_training_logs_lose_their_wall_clock_fields(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text(json.dumps({"step": 10, "loss": 0.5, "seconds": 3.2, "samples_per_s": 80.0}) + "\n\n" +
                   json.dumps({"step": 20, "loss": 0.4, "seconds": 6.1, "samples_per_s": 81.0}) + "\n")
    copy_log_without_timings(log, tmp_path / "copy.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "copy.jsonl").read_text().splitlines()]
    assert rows == [{"step": 10, "loss": 0.5}, {"step": 20, "loss": 0.4}]


def test_paths_inside_the_project_become_relative(tmp_path):
    root = tmp_path / "project"
    (root / "models" / "workcell").mkdir(parents=True)
    assert portable(root / "models" / "workcell" / "workcell.xml", root) == "models/workcell/workcell.xml"
    assert portable(str(root / "data" / ".." / "models"), root) == "models"
    outside = tmp_path / "elsewhere" / "recording"
    assert portable(outside, root) == str(outside)  # a user's dataset outside the project stays as given


def test_file_md5(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * (3 << 20) + b"tail")  # more than one read chunk
    assert file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()
