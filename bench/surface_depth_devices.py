"""The collision mesh's depth renderer (`render_surface_depth`) on CPU and CUDA, side by side: agreement of the
depth maps and the speed ratio. Reads transforms.json and the splat PLY directly, so it runs with torch + numpy only
(a GPU host without the project's other packages).

    python bench/surface_depth_devices.py [--capture data/capture] [--splat models/splat/splat.ply] [--repeats 3]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.splat.gaussians import load_ply  # noqa: E402
from pipeline.splat.rasterize import render_surface_depth  # noqa: E402

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def render_all(splat, meta, device, band):
    K = torch.tensor([[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1]], dtype=torch.float32,
                     device=device)
    args = [splat["means"].to(device), splat["quats"].to(device), torch.exp(splat["scales"]).to(device),
            torch.sigmoid(splat["opacities"]).to(device)]
    depths = []
    for frame in meta["frames"]:
        viewmat = torch.tensor(np.linalg.inv(np.array(frame["transform_matrix"]) @ GL_TO_CV), dtype=torch.float32,
                               device=device)
        depth, _ = render_surface_depth(*args, viewmat, K, meta["w"], meta["h"], band=band)
        depths.append(depth.cpu().numpy())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return depths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", default="data/capture")
    parser.add_argument("--splat", default="models/splat/splat.ply")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    meta = json.loads((Path(args.capture) / "transforms.json").read_text())
    splat = load_ply(args.splat)
    band = (0.005, 0.015)
    timings, results = {}, {}
    for name in ("cpu", "cuda"):
        device = torch.device(name)
        render_all(splat, meta, device, band)  # warm-up (CUDA context, allocator)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            results[name] = render_all(splat, meta, device, band)
        timings[name] = (time.perf_counter() - t0) / args.repeats
    cpu, cuda = np.stack(results["cpu"]), np.stack(results["cuda"])
    both = (cpu > 0) & (cuda > 0)
    diff = np.abs(cpu - cuda)[both]
    print(f"{len(meta['frames'])} views {meta['w']}x{meta['h']}, {len(splat['means'])} Gaussians")
    print(f"cpu  {timings['cpu']:.2f} s per pass; cuda {timings['cuda']:.2f} s per pass; speed-up "
          f"{timings['cpu'] / timings['cuda']:.1f}x")
    print(f"depth pixels set on one device only: {int(((cpu > 0) != (cuda > 0)).sum())} of {cpu.size}; where both: "
          f"median |diff| {1000 * np.median(diff):.4f} mm, 99.9th pct {1000 * np.percentile(diff, 99.9):.4f} mm, "
          f"max {1000 * diff.max():.3f} mm")


if __name__ == "__main__":
    main()
