"""Train several splat variants of the same captures in one run (gsplat on CUDA, or the CPU renderer) and save each
as a PLY, for `collision_mesh`'s object gate to score afterwards (bench/object_geometry.py --splat-only scores PLYs
with `mesh` on CPU). The asset's own trainer (`SplatTrainer`), so a variant trains exactly as the stage would.

    PYTHONPATH=/root/site:. python3 bench/splat_variants.py --out $OUT/splats \\
        --variant base data/capture '{}' --variant flat .gpusplat/c320 '{"flatten_lambda": 0.01}'

A variant: a name, a capture folder and JSON overrides of the `splat` section. Prints per variant its held-out
PSNR, Gaussians, seconds and iterations/s, side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from pipeline.capture.stage import Capture
    from pipeline.common.recipe import load_recipe
    from pipeline.splat.gaussians import save_ply
    from pipeline.splat.stage import SplatTrainer, Views, initial_gaussians, resolve_backend, score

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", nargs=3, action="append", metavar=("NAME", "CAPTURE", "JSON"), required=True)
    args = parser.parse_args()
    recipe = load_recipe(args.params)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, capture_dir, text in args.variant:
        cfg = type(recipe.splat).model_validate({**recipe.splat.model_dump(), **json.loads(text)})
        backend, device = resolve_backend(cfg.backend, args.device)
        capture = Capture.load(Path(capture_dir))
        views = Views.load(capture, cfg.holdout_every, device, cfg.background)
        init = initial_gaussians(capture, views, cfg)
        with tempfile.TemporaryDirectory() as work:
            trainer = SplatTrainer(cfg, views, init, backend, device, Path(work))
            t = time.perf_counter()
            trainer.train(cfg.iterations, progress=False, log=lambda *_: None)
            seconds = time.perf_counter() - t
            params = trainer.gaussians()
        result = score(params, views, views.holdout, backend, cfg)
        save_ply(args.out / f"{name}.ply", params)
        row = {"name": name, "capture": capture_dir, "overrides": text, "width": views.width,
               "height": views.height, "psnr_db": round(result["psnr_db"], 3), "gaussians": int(len(params["means"])),
               "iterations": cfg.iterations, "seconds": round(seconds, 1), "backend": backend}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "variants.json").write_text(json.dumps(rows, indent=2))
    print("\n| variant | capture | splat overrides | held-out PSNR dB | Gaussians | s | it/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['width']}×{r['height']} | `{r['overrides']}` | {r['psnr_db']:.2f} | "
              f"{r['gaussians']} | {r['seconds']:.1f} | {r['iterations'] / r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
