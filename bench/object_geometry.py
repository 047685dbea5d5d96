"""What each twin-chain setting does to the objects the twin gets: scene_capture → gaussian_splat → collision_mesh
with recipe overrides, each variant in its own folder, scored by collision_mesh's object gate (docs/mesh.md).

    python bench/object_geometry.py --workcell models/workcell --out /tmp/objgeo \\
        --variant default '{}' --variant init40k '{"splat": {"init_points": 40000}}'

A variant is a name and a JSON object of recipe overrides, one level of nesting per section (`{"capture":
{"distance_m": {"low": 0.35, "high": 0.6}}}`). Variants whose capture settings equal the default's reuse its capture
(`--capture` reuses a materialized one for all). Prints one table: per variant the stage times, held-out PSNR,
Gaussians, Chamfer and per object size / centre / yaw / volume against the ground truth, and the gate's verdict.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def with_overrides(recipe, overrides: dict):
    update = {}
    for section, values in overrides.items():
        current = getattr(recipe, section)
        fields = {k: getattr(current, k).model_copy(update=v) if isinstance(v, dict) else v
                  for k, v in values.items()}
        update[section] = current.model_copy(update=fields)
    return recipe.model_copy(update=update)


def main() -> int:
    from pipeline.capture.stage import build_scene_capture
    from pipeline.common.recipe import load_recipe
    from pipeline.mesh.object_gate import summary_line
    from pipeline.mesh.stage import build_collision_mesh
    from pipeline.splat.stage import build_gaussian_splat

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--workcell", default="models/workcell")
    parser.add_argument("--capture", default=None, help="a materialized capture every variant uses")
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    args = parser.parse_args()
    base = load_recipe(args.params)
    workcell_xml = Path(args.workcell) / "workcell.xml"
    rows = []
    for name, text in args.variant:
        recipe = with_overrides(base, json.loads(text))
        root = Path(args.out) / name
        t0 = time.perf_counter()
        if args.capture:
            capture = Path(args.capture)
        else:
            capture = root / "capture"
            same = next((r for r in rows if r["capture_md5"] == recipe.capture.md5()), None)
            if same is not None and not capture.exists():
                shutil.copytree(same["capture"], capture)
            elif not (capture / "transforms.json").exists():
                build_scene_capture(recipe, capture, workcell_xml, log=lambda *_: None, progress=False)
        t1 = time.perf_counter()
        splat = build_gaussian_splat(recipe, capture, root / "splat", root / "runs", log=lambda *_: None,
                                     progress=False)
        t2 = time.perf_counter()
        mesh = build_collision_mesh(recipe, capture, root / "splat", workcell_xml, root / "mesh",
                                    log=lambda *_: None, progress=False)
        t3 = time.perf_counter()
        rows.append({"name": name, "overrides": text, "capture": capture, "capture_md5": recipe.capture.md5(),
                     "capture_s": t1 - t0, "splat_s": t2 - t1, "mesh_s": t3 - t2, "splat": splat, "mesh": mesh})
        print(f"{name}: done in {t3 - t0:.0f} s", flush=True)

    print("\n| variant | overrides | capture s | splat s | mesh s | held-out PSNR dB | Gaussians | Chamfer mm | "
          "objects | gate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m, s = r["mesh"], r["splat"]
        objects = "; ".join(summary_line(k, v) for k, v in m["object_geometry"].items())
        gate = "pass" if not m["object_gate_problems"] else f"{len(m['object_gate_problems'])} problems"
        print(f"| {r['name']} | `{r['overrides']}` | {r['capture_s']:.0f} | {r['splat_s']:.0f} | {r['mesh_s']:.0f} | "
              f"{s['holdout_psnr_db']:.2f} | {s['gaussians']} | {m['chamfer_mm']:.2f} | {objects} | {gate} |")
    base_splat = rows[0]["splat_s"]
    for r in rows[1:]:
        print(f"splat time {r['name']} / {rows[0]['name']}: {r['splat_s'] / base_splat:.2f}")
    for r in rows:
        for problem in r["mesh"]["object_gate_problems"]:
            print(f"{r['name']}: {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
