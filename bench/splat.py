"""Gaussian-splat training: the `gaussian_splat` asset's trainer vs a plain gsplat loop, side by side, on one GPU.

    python bench/splat.py --capture data/capture --iterations 7000

Both train from the same capture, the same initial Gaussians and the same hyper-parameters (params.yaml `splat`):
  asset:  pipeline.splat.stage.SplatTrainer with backend gsplat (what `gaussian_splat` runs on CUDA: seeded view
          order, progress bar, train_log.jsonl, resumable checkpoints)
  plain:  the loop of gsplat's examples/simple_trainer.py written out (rasterization + DefaultStrategy + Adam,
          L1 + SSIM), nothing else
and are scored on the same held-out views. It also renders the asset's result with the CPU rasterizer (run on the
GPU tensors) and reports how far its images are from gsplat's. Prints a table and the ratios; `--json` saves them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.capture.stage import Capture  # noqa: E402
from pipeline.common.recipe import load_recipe  # noqa: E402
from pipeline.splat.stage import (PARAM_NAMES, SplatTrainer, Views, initial_gaussians, psnr, render_view,  # noqa: E402
                                  score, ssim)


def plain_gsplat_loop(cfg, views: Views, init: dict, iterations: int) -> tuple[dict, float]:
    """simple_trainer.py's training step, minus everything that is not training. Returns params and seconds."""
    from gsplat import rasterization
    from gsplat.strategy import DefaultStrategy

    device = views.images.device
    scene_scale = views.scene_scale()
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(init[k].to(device)) for k in PARAM_NAMES})
    lrs = {"means": cfg.lr_means * scene_scale, "scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
    optimizers = {k: torch.optim.Adam([{"params": params[k], "lr": lrs[k], "name": k}], eps=1e-15)
                  for k in PARAM_NAMES}
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"], gamma=0.01 ** (1.0 / iterations))
    d = cfg.densify
    strategy = DefaultStrategy(prune_opa=d.prune_opa, grow_grad2d=d.grow_grad2d, refine_start_iter=d.refine_start_iter,
                               refine_stop_iter=d.refine_stop_iter, refine_every=d.refine_every,
                               reset_every=d.reset_every)
    state = strategy.initialize_state(scene_scale=scene_scale)
    generator = torch.Generator().manual_seed(cfg.seed)
    train = torch.tensor(views.train)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(iterations):
        index = int(train[torch.randint(len(train), (1,), generator=generator)])
        renders, _, info = rasterization(
            means=params["means"], quats=params["quats"], scales=torch.exp(params["scales"]),
            opacities=torch.sigmoid(params["opacities"]), colors=torch.cat([params["sh0"], params["shN"]], 1),
            viewmats=views.viewmats[index:index + 1], Ks=views.K[None], width=views.width, height=views.height,
            sh_degree=min(step // cfg.sh_degree_interval, cfg.sh_degree), backgrounds=views.background, packed=False,
            rasterize_mode=cfg.rasterize_mode)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        target = views.images[index]
        loss = (1 - cfg.ssim_lambda) * F.l1_loss(renders[0], target) + cfg.ssim_lambda * (
            1 - ssim(renders[0], target))
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        scheduler.step()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
    torch.cuda.synchronize()
    return {k: v.detach() for k, v in params.items()}, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", default="data/capture")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--iterations", type=int, default=7000)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/splat.py compares gsplat runs: it needs a CUDA GPU", file=sys.stderr)
        return 2
    recipe = load_recipe(args.params)
    # Densification over the first 3/4 of the run, as simple_trainer spaces it (15k of 30k steps), at any length.
    densify = recipe.splat.densify.model_copy(update={"refine_stop_iter": int(args.iterations * 0.75)})
    cfg = recipe.splat.model_copy(update={"iterations": args.iterations, "backend": "gsplat", "densify": densify})
    device = torch.device("cuda")
    capture = Capture.load(args.capture)
    views = Views.load(capture, cfg.holdout_every, device, cfg.background)
    init = initial_gaussians(capture, views, cfg)

    # warm-up: gsplat compiles its CUDA kernels on first use (not counted)
    warm = {k: v.to(device).requires_grad_() for k, v in init.items()}
    image, _, _ = render_view(warm, views, views.train[0], "gsplat", 0, cfg)
    image.sum().backward()

    with tempfile.TemporaryDirectory() as work:
        trainer = SplatTrainer(cfg, views, init, "gsplat", device, Path(work))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train(args.iterations, progress=False, log=lambda *_: None)
        torch.cuda.synchronize()
        asset_s = time.perf_counter() - t0
        asset_params = trainer.gaussians()
    plain_params, plain_s = plain_gsplat_loop(cfg, views, init, args.iterations)

    asset = score(asset_params, views, views.holdout, "gsplat", cfg)
    plain = score(plain_params, views, views.holdout, "gsplat", cfg)
    cpu_renderer = score(asset_params, views, views.holdout, "torch", cfg)
    agreement = [psnr(a, b) for a, b in zip(cpu_renderer["renders"], asset["renders"])]
    max_diff = max(float((a - b).abs().max()) for a, b in zip(cpu_renderer["renders"], asset["renders"]))
    rows = {
        "asset": {"it_per_s": args.iterations / asset_s, "holdout_psnr_db": asset["psnr_db"],
                  "holdout_ssim": asset["ssim"], "gaussians": len(asset_params["means"])},
        "plain_gsplat": {"it_per_s": args.iterations / plain_s, "holdout_psnr_db": plain["psnr_db"],
                         "holdout_ssim": plain["ssim"], "gaussians": len(plain_params["means"])},
    }
    figures = {
        "device": torch.cuda.get_device_name(), "iterations": args.iterations,
        "image": f"{views.width}x{views.height}", "train_views": len(views.train),
        "holdout_views": len(views.holdout), **rows,
        "speed_ratio_asset_over_plain": rows["asset"]["it_per_s"] / rows["plain_gsplat"]["it_per_s"],
        "cpu_rasterizer_vs_gsplat_psnr_db": min(agreement),
        "cpu_rasterizer_vs_gsplat_max_abs_diff": max_diff,
    }
    print(f"{'':14s}{'it/s':>10s}{'held-out PSNR':>16s}{'SSIM':>8s}{'Gaussians':>11s}")
    for name, row in rows.items():
        print(f"{name:14s}{row['it_per_s']:10.1f}{row['holdout_psnr_db']:16.2f}{row['holdout_ssim']:8.4f}"
              f"{row['gaussians']:11d}")
    print(f"speed ratio asset/plain: {figures['speed_ratio_asset_over_plain']:.3f}")
    print(f"CPU rasterizer vs gsplat on the trained splat: worst view PSNR {min(agreement):.1f} dB, "
          f"max |diff| {max_diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if math.isfinite(asset["psnr_db"]) else 1


if __name__ == "__main__":
    sys.exit(main())
