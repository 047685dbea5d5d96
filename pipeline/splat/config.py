"""The `splat` section of params.yaml: Gaussian-splat training or an external PLY."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.common.sections import Section, Vec3, Positive

class DensifyConfig(Section):
    """gsplat's DefaultStrategy (the 3DGS paper's adaptive density control), on both renderers."""

    refine_start_iter: Annotated[int, Field(ge=0)] = 300
    refine_stop_iter: Annotated[int, Field(ge=0)] = 500  # gsplat: 15k of 30k steps; scaled to the CPU run
    refine_every: Annotated[int, Field(ge=1)] = 100
    reset_every: Annotated[int, Field(ge=1)] = 3000  # opacity reset period (longer than a CPU run: none happens)
    grow_grad2d: Positive = 0.0002
    prune_opa: Positive = 0.005


class SplatConfig(Section):
    """Stage `gaussian_splat`: 3D Gaussian splatting of the capture (gsplat on CUDA, the same math in PyTorch on
    CPU), or an externally trained INRIA-format PLY (e.g. `ns-export gaussian-splat`) scored on the same views."""

    source: Literal["train", "ply"] = "train"
    ply_path: str = ""  # source: ply — a 3DGS PLY in the capture's frame
    backend: Literal["auto", "gsplat", "torch"] = "auto"  # auto: gsplat when CUDA is present, else the CPU renderer
    iterations: Annotated[int, Field(ge=1)] = 600  # ~3 min on 2 CPU cores at 160x120; a GPU affords 7k-30k
    holdout_every: Annotated[int, Field(ge=2)] = 8  # every k-th capture image is held out: never trained on
    seed: int = 0
    init_points: Annotated[int, Field(ge=100)] = 10_000  # points drawn from the capture's point cloud
    init_opacity: Annotated[float, Field(gt=0, lt=1)] = 0.1
    init_scale: Positive = 1.0  # times the mean distance to the 3 nearest points
    sh_degree: Annotated[int, Field(ge=0, le=3)] = 3
    sh_degree_interval: Annotated[int, Field(ge=1)] = 200  # raise the SH degree in use every N steps
    ssim_lambda: Annotated[float, Field(ge=0, le=1)] = 0.2
    # Adam learning rates of gsplat's simple_trainer (means scaled by the scene size, decayed 100x over the run)
    lr_means: Positive = 1.6e-4
    lr_scales: Positive = 5e-3
    lr_quats: Positive = 1e-3
    lr_opacities: Positive = 5e-2
    lr_sh0: Positive = 2.5e-3
    lr_shN: Positive = 2.5e-3 / 20
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    # Geometry regularizers (0 = off). Photometric loss alone makes Gaussians round blobs that look right and sit
    # wrong: the depth a small object renders drifts behind its surface. `flatten_lambda` x mean smallest scale (mm)
    # turns Gaussians into surfels (2DGS-like discs); `opacity_lambda` x mean o(1-o) pushes opacities to 0 or 1.
    flatten_lambda: Annotated[float, Field(ge=0)] = 0.0
    opacity_lambda: Annotated[float, Field(ge=0)] = 0.0
    background: Vec3 = (0.0, 0.0, 0.0)  # what shows where no Gaussian covers a pixel (the sim renders black there)
    densify: DensifyConfig = DensifyConfig()
    # Checkpoint period in seconds of training (a GPU step takes milliseconds, a CPU one a third of a second): the
    # most work an interruption can lose. The last step is always saved.
    checkpoint_every_s: Annotated[float, Field(ge=0)] = 30.0
    log_every: Annotated[int, Field(ge=1)] = 50
    min_holdout_psnr_db: float = 25.0  # the blocking asset check

    def training_fingerprint(self) -> str:
        """md5 of what shapes the trained Gaussians; `iterations` is left out so raising it resumes the run."""
        skip = {"iterations", "min_holdout_psnr_db", "log_every", "checkpoint_every_s", "backend"}
        return self.md5(exclude=skip)
