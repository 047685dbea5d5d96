"""Stage `sim_workcell`: compile the SO-101 workcell and prove the scripted expert can solve it.

Framework-free: a recipe and an output folder in, files and metrics out. Writes to `out_dir`:
  workcell.xml, meshes/, workcell.json   the MuJoCo scene compiled from the official SO-101 USD
  preview.png                             the `front` and `wrist` cameras at the start of a few episodes
  metrics.json                            the expert's success rate over `expert.eval_episodes` seeds (+ Wilson CI)
  config.json                             the `workcell` and `expert` recipe sections it was built with

User guide: docs/workcell.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.common.artifacts import replace_dir, staging_dir, write_config, write_metrics
from pipeline.common.recipe import Recipe
from pipeline.common.stats import wilson_interval


def evaluate_expert(xml_path: Path, recipe: Recipe, episodes: int | None = None, progress: bool = True) -> dict:
    """Run the scripted expert on `episodes` seeded cube poses; success = cube resting in the bin."""
    from pipeline.workcell.expert import run_expert_episode
    from pipeline.workcell.cell import Workcell

    n = episodes or recipe.expert.eval_episodes
    seeds = [recipe.expert.seed * 100_000 + i for i in range(n)]
    workcell = Workcell(xml_path, recipe.workcell)
    results = []
    for seed in tqdm(seeds, desc="expert episodes", unit="ep", disable=not progress):
        results.append(run_expert_episode(workcell, recipe.expert, seed))
    workcell.close()
    wins = sum(r.success for r in results)
    low, high = wilson_interval(wins, n)
    return {
        "expert_episodes": n,
        "expert_successes": wins,
        "expert_success_rate": wins / n,
        "expert_success_ci95": [round(float(low), 4), round(float(high), 4)],
        "expert_failed_seeds": [r.seed for r in results if not r.success],
        "expert_mean_episode_s": float(np.mean([r.steps for r in results])) / recipe.workcell.fps,
    }


def render_preview(xml_path: Path, recipe: Recipe, out_png: Path, seeds=(0, 1, 2)) -> Path:
    """One row per seed: `front` | `wrist` at reset, so a person can see what the cameras see."""
    from PIL import Image

    from pipeline.workcell.cell import Workcell

    workcell = Workcell(xml_path, recipe.workcell)
    rows = []
    for seed in seeds:
        workcell.reset(seed)
        rows.append(np.concatenate([workcell.render("front"), workcell.render("wrist")], axis=1))
    workcell.close()
    Image.fromarray(np.concatenate(rows, axis=0)).save(out_png)
    return out_png


def build_sim_workcell(recipe: Recipe, out_dir: Path, log=print) -> dict:
    """Compile, preview and evaluate. Returns the metrics (also written to metrics.json).

    Everything is built in a sibling `.partial` folder that replaces `out_dir` only once complete, so a failed or
    interrupted build leaves the previous workcell intact."""
    from pipeline.workcell.build import compile_workcell

    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    t0 = time.perf_counter()
    xml_path = compile_workcell(recipe.workcell, staging, progress=log)
    build_s = time.perf_counter() - t0
    log("rendering camera previews")
    render_preview(xml_path, recipe, staging / "preview.png")
    log(f"evaluating the scripted expert on {recipe.expert.eval_episodes} seeded cube poses")
    metrics = {"build_seconds": round(build_s, 1), **evaluate_expert(xml_path, recipe)}
    metrics["expert_min_success_rate"] = recipe.expert.min_success_rate
    write_config(staging, {"workcell": recipe.workcell.model_dump(mode="json"),
                           "expert": recipe.expert.model_dump(mode="json")})
    write_metrics(staging, metrics)
    replace_dir(staging, out_dir)
    return metrics

