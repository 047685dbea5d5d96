"""Stage `gaussian_splat`: 3D Gaussian splatting of the `scene_capture`, on CUDA (gsplat) or CPU (same math).

Framework-free. gsplat's simple_trainer recipe: Gaussians initialized from the capture's points, Adam per parameter
group, loss (1-λ)·L1 + λ·(1-SSIM), gsplat's DefaultStrategy densification, SH degree raised over time. Every
`holdout_every`-th capture image is held out: never rendered during training, never used to place initial points.
Resumable: checkpoints in `runs/splat/<fingerprint>/` (fingerprint = training recipe without `iterations` + the
capture's md5), so an interrupted run — or one whose `iterations` was raised — continues where it stopped.

Writes to `out_dir`:
  splat.ply           the Gaussians, INRIA 3DGS PLY (any splat viewer opens it)
  metrics.json        held-out PSNR/SSIM (and of the initialization), Gaussian count, iterations (time and it/s
                      are reported, not written: they differ on every run)
  holdout.png         held-out views: photo | render | error
  training.png        loss, training PSNR and Gaussian count over the steps; train_log.jsonl: the same, raw
  config.json         the recipe section, capture md5, renderer and device that made it

User guide: docs/splat.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.common.artifacts import (copy_log_without_timings, keep_log_until, portable, remove_other_runs, replace_dir,
                                       staging_dir, write_config, write_metrics)
from pipeline.capture.stage import Capture
from pipeline.common.recipe import Recipe
from pipeline.splat.config import SplatConfig
from pipeline.splat.gaussians import init_from_points, load_ply, save_ply, sh_degree_of
from pipeline.splat.rasterize import rasterize

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


class SplatError(ValueError):
    """The splat cannot be trained or scored: no capture, no usable points, a renderer this machine lacks."""


@dataclass
class Views:
    """The capture's images and cameras as tensors on the training device."""

    images: torch.Tensor  # [V, H, W, 3] in [0, 1]
    viewmats: torch.Tensor  # [V, 4, 4] world-to-camera, OpenCV
    K: torch.Tensor  # [3, 3]
    width: int
    height: int
    train: list[int]
    holdout: list[int]
    background: torch.Tensor  # [1, 3]: what shows where no Gaussian covers a pixel

    @classmethod
    def load(cls, capture: Capture, holdout_every: int, device: torch.device,
             background: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Views:
        images = np.stack([capture.image(i) for i in range(len(capture.frames))]).astype(np.float32) / 255
        viewmats = np.stack([f.viewmat() for f in capture.frames]).astype(np.float32)
        holdout = capture.holdout_indices(holdout_every)
        train = [i for i in range(len(capture.frames)) if i not in holdout]
        if len(train) < 2 or not holdout:
            raise SplatError(f"{len(capture.frames)} images with splat.holdout_every={holdout_every} leave "
                             f"{len(train)} to train on and {len(holdout)} to score: add views")
        return cls(torch.tensor(images, device=device), torch.tensor(viewmats, device=device),
                   torch.tensor(capture.K, dtype=torch.float32, device=device), capture.width, capture.height,
                   train, holdout, torch.tensor([background], dtype=torch.float32, device=device))

    def scene_scale(self) -> float:
        """simple_trainer's scene size: 1.1 x the largest camera distance from the cameras' centroid."""
        centres = torch.linalg.inv(self.viewmats)[:, :3, 3]
        return 1.1 * float((centres - centres.mean(0)).norm(dim=1).max())


def resolve_backend(requested: str, device: str) -> tuple[str, torch.device]:
    cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SplatError("device cuda requested, but torch sees no CUDA device")
    if requested == "gsplat" and not cuda:
        raise SplatError("splat.backend=gsplat needs a CUDA GPU (gsplat has no CPU rasterizer); use backend auto "
                         "or torch on this machine")
    backend = requested if requested != "auto" else ("gsplat" if cuda else "torch")
    return backend, torch.device("cuda" if cuda else "cpu")


def render_view(params: dict[str, torch.Tensor], views: Views, index: int, backend: str, sh_degree: int,
                cfg: SplatConfig, render_mode: str = "RGB") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One capture view: image [H, W, C], alpha [H, W, 1], gsplat's info dict."""
    renders, alphas, info = rasterize(
        backend,
        means=params["means"], quats=params["quats"], scales=torch.exp(params["scales"]),
        opacities=torch.sigmoid(params["opacities"]), colors=torch.cat([params["sh0"], params["shN"]], 1),
        viewmats=views.viewmats[index:index + 1], Ks=views.K[None], width=views.width, height=views.height,
        sh_degree=sh_degree, backgrounds=views.background,
        render_mode=render_mode, rasterize_mode=cfg.rasterize_mode,
    )
    return renders[0], alphas[0], info


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two [H, W, C] images in [0, 1] (Gaussian window, valid region: as 3DGS papers report it)."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    channels = x.shape[1]
    g = torch.exp(-((torch.arange(window, device=a.device) - window // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).float()
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, kernel, groups=channels)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return value.mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(F.mse_loss(a.clamp(0, 1), b))
    return 10 * math.log10(1 / mse) if mse > 0 else float("inf")


@torch.no_grad()
def score(params, views: Views, indices: list[int], backend: str, cfg: SplatConfig) -> dict:
    """PSNR/SSIM of the renders against the photos at `indices` (per view and mean) plus the renders."""
    degree = sh_degree_of(params)
    renders, psnrs, ssims = [], [], []
    for i in indices:
        image, _, _ = render_view(params, views, i, backend, degree, cfg)
        image = image.clamp(0, 1)
        renders.append(image.cpu())
        psnrs.append(psnr(image, views.images[i]))
        ssims.append(float(ssim(image, views.images[i])))
    return {"psnr_db": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "psnr_per_view": psnrs,
            "ssim_per_view": ssims, "renders": renders}


def capture_md5(capture: Capture) -> str:
    """md5 of transforms.json, the point cloud and every image: what the splat is trained from."""
    digest = hashlib.md5()
    files = [capture.root / "transforms.json", *(f.image for f in capture.frames)]
    for path in files + ([capture.point_cloud] if capture.point_cloud else []):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def initial_gaussians(capture: Capture, views: Views, cfg: SplatConfig) -> dict[str, torch.Tensor]:
    points = capture.points()
    if points is None:
        raise SplatError(f"the capture in {capture.root} has no point cloud (transforms.json ply_file_path) to "
                         "initialize the Gaussians from")
    xyz = np.stack([points["x"], points["y"], points["z"]], -1).astype(np.float64)
    rgb = (np.stack([points["red"], points["green"], points["blue"]], -1) / 255.0 if "red" in points
           else np.full_like(xyz, 0.5))
    if "frame" in points:  # points seen first in a held-out image would leak it into training
        keep = ~np.isin(points["frame"], views.holdout)
        xyz, rgb = xyz[keep], rgb[keep]
    if len(xyz) < 4:
        raise SplatError("the capture's point cloud has fewer than 4 points outside the held-out views")
    rng = np.random.default_rng(cfg.seed)
    if len(xyz) > cfg.init_points:
        pick = rng.choice(len(xyz), cfg.init_points, replace=False)
        xyz, rgb = xyz[pick], rgb[pick]
    return init_from_points(xyz, rgb, cfg.sh_degree, cfg.init_opacity, cfg.init_scale)


def geometry_regularizer(params: dict[str, torch.Tensor], cfg: SplatConfig) -> torch.Tensor | float:
    """`flatten_lambda` x the mean smallest scale in mm (surfels, not blobs) + `opacity_lambda` x mean o(1-o)
    (opaque or gone); 0 when both are off."""
    term = 0.0
    if cfg.flatten_lambda > 0:
        term = term + cfg.flatten_lambda * 1000.0 * torch.exp(params["scales"]).min(dim=-1).values.mean()
    if cfg.opacity_lambda > 0:
        o = torch.sigmoid(params["opacities"])
        term = term + cfg.opacity_lambda * (o * (1 - o)).mean()
    return term


class SplatTrainer:
    """gsplat's simple_trainer loop, resumable, on either renderer."""

    def __init__(self, cfg: SplatConfig, views: Views, init: dict[str, torch.Tensor], backend: str,
                 device: torch.device, work_dir: Path):
        from gsplat.strategy import DefaultStrategy

        self.cfg, self.views, self.backend, self.device = cfg, views, backend, device
        self.work_dir = Path(work_dir)
        self.checkpoint_path = self.work_dir / "checkpoint.pt"
        self.log_path = self.work_dir / "train_log.jsonl"
        self.scene_scale = views.scene_scale()
        d = cfg.densify
        self.strategy = DefaultStrategy(
            prune_opa=d.prune_opa, grow_grad2d=d.grow_grad2d, refine_start_iter=d.refine_start_iter,
            refine_stop_iter=d.refine_stop_iter, refine_every=d.refine_every, reset_every=d.reset_every)
        self._epoch_order = (-1, None)
        if self.checkpoint_path.is_file():
            self._resume()
        else:
            self.step, self.seconds = 0, 0.0
            self.params = self._parameters(init)
            self.optimizers = self._optimizers()
            self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)
            self.log_path.unlink(missing_ok=True)  # a run that died before its first checkpoint starts over

    def _parameters(self, tensors):
        return torch.nn.ParameterDict({k: torch.nn.Parameter(tensors[k].to(self.device)) for k in PARAM_NAMES})

    def _optimizers(self):
        c = self.cfg
        lrs = {"means": c.lr_means * self.scene_scale, "scales": c.lr_scales, "quats": c.lr_quats,
               "opacities": c.lr_opacities, "sh0": c.lr_sh0, "shN": c.lr_shN}
        return {k: torch.optim.Adam([{"params": self.params[k], "lr": lrs[k], "name": k}], eps=1e-15)
                for k in PARAM_NAMES}

    def _resume(self):
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self.step, self.seconds = state["step"], state["seconds"]
        self.params = self._parameters(state["params"])
        self.optimizers = self._optimizers()
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self.strategy_state = state["strategy_state"]
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location moved it to the training device
        if state.get("cuda_rng") is not None:  # densification draws on the training device's generator
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        keep_log_until(self.log_path, self.step)

    def _save(self):
        state = {"step": self.step, "seconds": self.seconds,
                 "params": {k: v.detach() for k, v in self.params.items()},
                 "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
                 "strategy_state": self.strategy_state, "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)  # a kill mid-write leaves the previous checkpoint

    def view_for_step(self, step: int) -> int:
        """A seeded permutation of the training views per epoch: the same sequence whether or not the run resumed."""
        n = len(self.views.train)
        if self._epoch_order[0] != step // n:
            self._epoch_order = (step // n, np.random.default_rng([self.cfg.seed, step // n]).permutation(n))
        return self.views.train[self._epoch_order[1][step % n]]

    def train(self, iterations: int, progress: bool = True, log: Callable[[str], None] = print) -> None:
        from tqdm import tqdm

        cfg = self.cfg
        if self.step >= iterations:
            return
        if self.step:  # the checkpoint restored the RNG state: the run continues exactly as if never stopped
            log(f"resuming from step {self.step} ({self.checkpoint_path})")
        else:
            torch.manual_seed(cfg.seed)
        bar = tqdm(range(self.step, iterations), initial=self.step, total=iterations, desc="splat", unit="it",
                   disable=not progress)
        t0 = time.perf_counter() - self.seconds
        last_save = time.perf_counter()
        with open(self.log_path, "a") as log_file:
            for step in bar:
                index = self.view_for_step(step)
                degree = min(step // cfg.sh_degree_interval, cfg.sh_degree)
                for group in self.optimizers["means"].param_groups:  # simple_trainer: means lr decays 100x
                    group["lr"] = cfg.lr_means * self.scene_scale * 0.01 ** (step / iterations)
                image, _, info = render_view(self.params, self.views, index, self.backend, degree, cfg)
                self.strategy.step_pre_backward(self.params, self.optimizers, self.strategy_state, step, info)
                target = self.views.images[index]
                l1 = F.l1_loss(image, target)
                ssim_value = ssim(image, target)
                loss = (1 - cfg.ssim_lambda) * l1 + cfg.ssim_lambda * (1 - ssim_value) + geometry_regularizer(
                    self.params, cfg)
                loss.backward()
                for opt in self.optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, step, info,
                                                 packed=False)
                self.step = step + 1
                if self.step % cfg.log_every == 0 or self.step == iterations:
                    self.seconds = time.perf_counter() - t0
                    record = {"step": self.step, "loss": loss.item(), "l1": l1.item(), "ssim": ssim_value.item(),
                              "psnr_db": psnr(image.detach(), target), "gaussians": len(self.params["means"]),
                              "sh_degree": degree, "seconds": round(self.seconds, 2)}
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                    bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['psnr_db']:.1f}",
                                    n=record["gaussians"])
                    if not progress:
                        log(f"step {self.step}/{iterations}: loss {record['loss']:.4f}, train PSNR "
                            f"{record['psnr_db']:.1f} dB, {record['gaussians']} Gaussians")
                if self.step == iterations or time.perf_counter() - last_save >= cfg.checkpoint_every_s:
                    self.seconds = time.perf_counter() - t0
                    self._save()
                    last_save = time.perf_counter()

    def gaussians(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.params.items()}


def build_gaussian_splat(recipe: Recipe, capture_dir: Path, out_dir: Path, runs_dir: Path, device: str = "auto",
                         root: Path = Path("."), log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train (or import) the splat, score it on the held-out views, write `out_dir`. Returns the metrics."""
    cfg = recipe.splat
    backend, torch_device = resolve_backend(cfg.backend, device)
    capture = Capture.load(capture_dir)
    views = Views.load(capture, cfg.holdout_every, torch_device, cfg.background)
    source_md5 = capture_md5(capture)
    t0 = time.perf_counter()
    if cfg.source == "ply":
        if not cfg.ply_path:
            raise SplatError("splat.source=ply needs splat.ply_path")
        ply = Path(cfg.ply_path) if Path(cfg.ply_path).is_absolute() else root / cfg.ply_path
        log(f"scoring the external splat {ply} on {len(views.holdout)} held-out capture views")
        params = {k: v.to(torch_device) for k, v in load_ply(ply).items()}
        initial, iterations, it_per_s, train_seconds, train_log = None, 0, None, 0.0, None
    else:
        init = initial_gaussians(capture, views, cfg)
        work_dir = Path(runs_dir) / "splat" / hashlib.md5(
            (cfg.training_fingerprint() + source_md5).encode()).hexdigest()[:12]
        work_dir.mkdir(parents=True, exist_ok=True)
        remove_other_runs(work_dir)
        trainer = SplatTrainer(cfg, views, init, backend, torch_device, work_dir)
        initial = score({k: v.to(torch_device) for k, v in init.items()}, views, views.holdout, backend, cfg)
        state = (f"resuming {work_dir} at step {trainer.step} of {cfg.iterations}" if trainer.step else
                 f"training {len(init['means'])} Gaussians for {cfg.iterations} steps")
        log(f"{state} on {len(views.train)} views with {backend} on {torch_device.type} (held out: "
            f"{len(views.holdout)}); the initialization scores {initial['psnr_db']:.2f} dB held out")
        trainer.train(cfg.iterations, progress=progress, log=log)
        # training time summed over every resumed session (kept in the checkpoint), not this call's
        train_seconds = trainer.seconds
        it_per_s = trainer.step / train_seconds if train_seconds else None
        params, iterations, train_log = trainer.gaussians(), trainer.step, trainer.log_path
    result = score(params, views, views.holdout, backend, cfg)
    train_score = score(params, views, views.train[:: max(1, len(views.train) // 8)], backend, cfg)
    metrics = {
        "source": cfg.source, "backend": backend, "device": torch_device.type,
        "holdout_psnr_db": round(result["psnr_db"], 3), "holdout_ssim": round(result["ssim"], 4),
        "holdout_psnr_per_view": [round(v, 3) for v in result["psnr_per_view"]],
        "holdout_views": views.holdout, "train_views": len(views.train),
        "train_psnr_db": round(train_score["psnr_db"], 3),
        "initial_holdout_psnr_db": None if initial is None else round(initial["psnr_db"], 3),
        "gaussians": int(len(params["means"])), "sh_degree": sh_degree_of(params), "iterations": iterations,
        "iterations_per_s": None if it_per_s is None else round(it_per_s, 2),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - t0, 1), "min_holdout_psnr_db": cfg.min_holdout_psnr_db,
        "width": views.width, "height": views.height, "capture_md5": source_md5,
    }
    staging = staging_dir(Path(out_dir))
    staging.mkdir(parents=True)
    save_ply(staging / "splat.ply", params)
    _holdout_figure(views, views.holdout, result, staging / "holdout.png")
    if train_log is not None and train_log.is_file():
        copy_log_without_timings(train_log, staging / "train_log.jsonl")
        _training_figure(staging / "train_log.jsonl", staging / "training.png")
    write_config(staging, {"splat": cfg.model_dump(mode="json"), "capture_md5": source_md5, "backend": backend,
                           "device": torch_device.type, "capture_dir": portable(capture_dir, root)})
    write_metrics(staging, metrics)
    replace_dir(staging, Path(out_dir))
    return metrics


def _holdout_figure(views: Views, indices: list[int], result: dict, path: Path, rows: int = 4) -> None:
    """photo | render | |error| for up to `rows` held-out views, PSNR in each row's label."""
    from PIL import Image, ImageDraw

    picks = np.linspace(0, len(indices) - 1, min(rows, len(indices))).round().astype(int)
    strips = []
    for k in picks:
        photo = views.images[indices[k]].cpu().numpy()
        render = result["renders"][k].numpy()
        error = np.abs(photo - render).mean(-1, keepdims=True).repeat(3, -1) * 4
        strip = Image.fromarray((np.concatenate([photo, render, error.clip(0, 1)], 1) * 255).astype(np.uint8))
        draw = ImageDraw.Draw(strip)
        draw.text((4, 4), f"held-out view {indices[k]}: photo", fill=(255, 255, 255))
        draw.text((views.width + 4, 4), f"render  PSNR {result['psnr_per_view'][k]:.1f} dB", fill=(255, 255, 255))
        draw.text((2 * views.width + 4, 4), "|error| x4", fill=(255, 255, 255))
        strips.append(np.asarray(strip))
    Image.fromarray(np.concatenate(strips, 0)).save(path)


def _training_figure(log_path: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot(steps, [r["loss"] for r in records])
    ax_loss.set_xlabel("step"), ax_loss.set_ylabel("loss (L1 + D-SSIM)"), ax_loss.set_yscale("log")
    ax_psnr.plot(steps, [r["psnr_db"] for r in records], color="tab:green")
    ax_psnr.set_xlabel("step"), ax_psnr.set_ylabel("training-view PSNR (dB)")
    twin = ax_psnr.twinx()
    twin.plot(steps, [r["gaussians"] for r in records], color="tab:gray", linestyle="--")
    twin.set_ylabel("Gaussians", color="tab:gray")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
