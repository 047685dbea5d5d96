"""Where does the collision mesh's error come from: the splat, or the meshing? Runs the `collision_mesh` stage twice
on the materialized capture, side by side: once on depth rendered from the splat (what the asset does), once on the
capture's ground-truth depth through the very same fusion, segmentation and decomposition.

    python bench/mesh_depth_source.py [--capture data/capture] [--splat models/splat]

Prints the Chamfer distance to ground truth, the objects found with their sizes and hull counts, for both sources,
and the ratio of the Chamfer distances. Needs a sim capture (it has ground-truth depth).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.mesh.stage as stage  # noqa: E402
from pipeline.common.recipe import load_recipe  # noqa: E402
from pipeline.mesh.fusion import drop_depth_edges  # noqa: E402


def run(source: str, args, out: Path) -> dict:
    recipe = load_recipe(args.params)
    original = stage.render_depths
    if source == "ground truth":
        def ground_truth_depths(splat, capture, cfg, device, progress=None):
            if capture.depth(0) is None:
                raise SystemExit("this capture has no ground-truth depth (only the sim source renders it)")
            return [drop_depth_edges(capture.depth(i), cfg.depth_edge_m) for i in range(len(capture.frames))]
        stage.render_depths = ground_truth_depths
    try:
        t0 = time.perf_counter()
        metrics = stage.build_collision_mesh(recipe, Path(args.capture), Path(args.splat), Path(args.workcell), out,
                                             device="cpu", log=lambda *_: None, progress=False)
        metrics["wall_s"] = time.perf_counter() - t0
    finally:
        stage.render_depths = original
    metrics["scene"] = json.loads((out / "scene.json").read_text())
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", default="data/capture")
    parser.add_argument("--splat", default="models/splat")
    parser.add_argument("--workcell", default="models/workcell/workcell.xml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in ("splat", "ground truth"):
            results[source] = run(source, args, Path(tmp) / source.replace(" ", "_"))
    for source, m in results.items():
        print(f"{source:>12} depth: Chamfer {m['chamfer_mm']:.2f} mm (reconstruction->truth "
              f"{m['reconstruction_to_truth_mm']:.2f}, truth->reconstruction {m['truth_to_reconstruction_mm']:.2f}), "
              f"{m['wall_s']:.0f} s")
        for part in m["scene"]["parts"]:
            size = " x ".join(f"{1000 * v:.1f}" for v in part.get("size_m", []))
            print(f"{'':>20}{part['name']:<10} {part['role']:<8} hulls {len(part['hulls']):>2}  {size}")
    ratio = results["splat"]["chamfer_mm"] / results["ground truth"]["chamfer_mm"]
    print(f"Chamfer ratio splat / ground-truth depth: {ratio:.2f}")


if __name__ == "__main__":
    main()
