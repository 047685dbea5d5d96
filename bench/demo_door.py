"""What the demo door costs: decoding every video frame vs the first/last-frame check, serial vs parallel, and a
batch's screening, lerobot merge and merge verification, measured side by side in one run.

    .venv/bin/python bench/demo_door.py --workdir /tmp/demo-door                     # records 80 + 8 episodes first
    .venv/bin/python bench/demo_door.py --workdir /tmp/demo-door --demos data/demos --batch path/to/batch

Without --demos / --batch it records them with the sim expert on the default recipe (params.yaml: 640×480 `front`
and `wrist` cameras at 30 fps; the batch with seed 1 so it is not a copy of the demos); recording is not timed.
Prints seconds and per-episode costs of:
  videos        the first and last frame of every episode, lerobot's torchcodec decoder (the check before issue 20)
  video_frames  every frame of every camera with PyAV, 1 thread vs one per core (frames.py)
  ingest        screen_batch (every check + the comparison with the demos), lerobot's merge_datasets alone, and
                verify_merged (new episodes fully decoded, old ones first/last) on the merge's output
  damage sweep  --damage-trials copies of the batch's first video, each with 16–4000 random bytes written at a random
                offset: how many the door's decoder (PyAV) refuses, how many torchcodec refuses, how many decode
                silently with wrong pixels (found only by comparing with the undamaged decode, which the door cannot)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def record(recipe, out: Path, episodes: int, seed: int, workcell_xml: Path) -> Path:
    from pipeline.demos.stage import build_demos

    if not (out / "meta" / "info.json").is_file():
        r = recipe.model_copy(update={"demos": recipe.demos.model_copy(update={"episodes": episodes, "seed": seed})})
        build_demos(r, out, workcell_xml=workcell_xml)
    return out


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


def damage_sweep(video: Path, trials: int, seed: int, workdir: Path) -> dict:
    """Decoder verdicts on `trials` randomly damaged copies of `video` (see the module docstring)."""
    from collections import Counter

    import av
    import numpy as np
    from torchcodec.decoders import VideoDecoder

    original = video.read_bytes()
    reference = VideoDecoder(str(video)).get_frames_in_range(0, VideoDecoder(str(video)).metadata.num_frames).data

    def torchcodec_verdict(path):
        try:
            decoder = VideoDecoder(str(path), seek_mode="exact")
            frames = decoder.get_frames_in_range(0, decoder.metadata.num_frames).data
        except Exception:
            return "refused"
        same = frames.shape == reference.shape and bool((frames == reference).all())
        return "intact" if same else "silent"

    def pyav_verdict(path):
        try:
            with av.open(str(path)) as container:
                n = sum(1 for _ in container.decode(container.streams.video[0]))
        except Exception:
            return "refused"
        return "intact" if n == reference.shape[0] else "refused"

    rng, counts = np.random.default_rng(seed), Counter()
    damaged = workdir / "damaged.mp4"
    for _ in range(trials):
        data = bytearray(original)
        size = int(rng.choice([16, 200, 1000, 4000]))
        at = int(rng.integers(len(data) // 50, len(data) - size))  # past the header (moov first: faststart)
        data[at:at + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        damaged.write_bytes(bytes(data))
        counts[(pyav_verdict(damaged), torchcodec_verdict(damaged))] += 1
    damaged.unlink()
    return dict(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/demo-door"))
    parser.add_argument("--demos", type=Path, help="an existing dataset (default: record --episodes into workdir)")
    parser.add_argument("--batch", type=Path, help="an existing batch (default: record --batch-episodes, seed 1)")
    parser.add_argument("--episodes", type=int, default=80)
    parser.add_argument("--batch-episodes", type=int, default=8)
    parser.add_argument("--damage-trials", type=int, default=60)
    args = parser.parse_args()

    from lerobot.datasets.dataset_tools import merge_datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.video_utils import _default_decoder_cache

    from pipeline.common.recipe import load_recipe
    from pipeline.demos.checks import DemoData, check_videos
    from pipeline.demos.frames import decode_every_frame
    from pipeline.demos.inbox import screen_batch
    from pipeline.demos.stage import DEMOS_REPO_ID, verify_merged

    recipe = load_recipe(REPO / "params.yaml")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.demos is None or args.batch is None:
        from pipeline.workcell.build import compile_workcell

        xml = args.workdir / "workcell" / "workcell.xml"
        if not xml.is_file():
            xml = compile_workcell(recipe.workcell, args.workdir / "workcell")
        args.demos = args.demos or record(recipe, args.workdir / "demos", args.episodes, 0, xml)
        args.batch = args.batch or record(recipe, args.workdir / "batch", args.batch_episodes, 1, xml)

    demos = DemoData.load(args.demos)
    n_ep, n_frames, cams = demos.meta.total_episodes, demos.meta.total_frames, len(demos.video_keys)
    size = demos.meta.features[demos.video_keys[0]]["shape"]
    cores = len(os.sched_getaffinity(0))
    print(f"demos: {n_ep} episodes, {n_frames} frames, {cams} cameras {size[1]}×{size[0]}, {cores} cores")

    first_last, t_first_last = timed(check_videos, demos)
    _default_decoder_cache.clear()
    serial, t_serial = timed(decode_every_frame, demos, workers=1)
    parallel, t_parallel = timed(decode_every_frame, demos, workers=cores)
    assert first_last.passed and not serial and not parallel, (first_last.message, serial[:3], parallel[:3])
    print(f"videos (first/last frame, torchcodec): {t_first_last:7.2f} s  {1000 * t_first_last / n_ep:7.1f} ms/episode")
    print(f"video_frames, 1 thread:                {t_serial:7.2f} s  {1000 * t_serial / n_ep:7.1f} ms/episode  "
          f"{n_frames * cams / t_serial:6.0f} frames/s")
    print(f"video_frames, {cores} threads:               {t_parallel:7.2f} s  {1000 * t_parallel / n_ep:7.1f} ms/episode  "
          f"{n_frames * cams / t_parallel:6.0f} frames/s")
    print(f"ratios: full decode / first-last {t_parallel / t_first_last:.1f}×; parallel speed-up "
          f"{t_serial / t_parallel:.2f}× on {cores} cores")

    batch = DemoData.load(args.batch)
    reasons, t_screen = timed(screen_batch, args.batch, args.demos, recipe)
    assert not reasons, reasons
    merged = args.workdir / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    _, t_merge = timed(merge_datasets, [LeRobotDataset(DEMOS_REPO_ID, root=args.demos),
                                        LeRobotDataset(DEMOS_REPO_ID, root=args.batch)],
                       output_repo_id=DEMOS_REPO_ID, output_dir=merged)
    _default_decoder_cache.clear()
    problems, t_verify = timed(verify_merged, merged, demos, batch)
    assert not problems, problems
    b = batch.meta.total_episodes
    print(f"ingest of {b} episodes into {n_ep}: screen_batch {t_screen:.2f} s ({1000 * t_screen / b:.0f} ms/episode), "
          f"lerobot merge_datasets {t_merge:.2f} s, verify_merged {t_verify:.2f} s; verification / merge "
          f"{t_verify / t_merge:.2f}×, door total / merge {(t_screen + t_merge + t_verify) / t_merge:.2f}×")
    shutil.rmtree(merged, ignore_errors=True)

    video = batch.video_path(0, batch.video_keys[0])
    counts = damage_sweep(video, args.damage_trials, seed=0, workdir=args.workdir)
    refused = sum(n for (pyav, _), n in counts.items() if pyav == "refused")
    tc_refused = sum(n for (_, tc), n in counts.items() if tc == "refused")
    tc_only = sum(n for (pyav, tc), n in counts.items() if tc == "refused" and pyav != "refused")
    silent = sum(n for (pyav, tc), n in counts.items() if pyav != "refused" and tc == "silent")
    print(f"damage sweep on {video.relative_to(args.batch)} ({video.stat().st_size / 1e6:.1f} MB), "
          f"{args.damage_trials} trials: the door (PyAV) refuses {refused}, torchcodec refuses {tc_refused}, "
          f"torchcodec only {tc_only}; decode silently with wrong pixels {silent}; raw {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
