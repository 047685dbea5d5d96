"""Gaussian splat parameters (gsplat's names and activations) and the standard INRIA 3DGS PLY file.

Parameters, as gsplat's simple_trainer keeps them: means [N, 3], scales [N, 3] (log), quats [N, 4] (w, x, y, z,
unnormalized), opacities [N] (logit), sh0 [N, 1, 3] and shN [N, K-1, 3] (spherical-harmonic colour coefficients).
The PLY holds exactly these (x, y, z, nx, ny, nz, f_dc_0..2, f_rest_*, opacity, scale_0..2, rot_0..3), with f_rest
stored channel-major as the INRIA code writes it, so any 3DGS viewer opens it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.common.ply import PlyError, read_ply, write_ply

SH_C0 = 0.28209479177387814


def rgb_to_sh0(rgb: np.ndarray) -> np.ndarray:
    """Colours in [0, 1] to the degree-0 coefficient that renders them (colour = SH_C0·c + 0.5)."""
    return (rgb - 0.5) / SH_C0


def init_from_points(xyz: np.ndarray, rgb: np.ndarray, sh_degree: int, init_opacity: float, init_scale: float,
                     ) -> dict[str, torch.Tensor]:
    """3DGS initialization: a Gaussian per point, isotropic, sized by the mean distance to its 3 nearest points."""
    from scipy.spatial import cKDTree

    if len(xyz) < 4:
        raise ValueError(f"{len(xyz)} initial points: at least 4 are needed")
    distances, _ = cKDTree(xyz).query(xyz, k=4)
    mean_distance = np.sqrt((distances[:, 1:] ** 2).mean(axis=1)).clip(min=1e-7)
    n = len(xyz)
    rng = torch.Generator().manual_seed(0)
    return {
        "means": torch.tensor(xyz, dtype=torch.float32),
        "scales": torch.log(torch.tensor(mean_distance * init_scale, dtype=torch.float32))[:, None].repeat(1, 3),
        "quats": torch.rand(n, 4, generator=rng),
        "opacities": torch.logit(torch.full((n,), init_opacity)),
        "sh0": torch.tensor(rgb_to_sh0(rgb), dtype=torch.float32)[:, None, :],
        "shN": torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3),
    }


def save_ply(path: str | Path, params: dict[str, torch.Tensor]) -> Path:
    p = {k: v.detach().cpu().float().numpy() for k, v in params.items()}
    n = len(p["means"])
    rest = p["shN"].transpose(0, 2, 1).reshape(n, 3 * p["shN"].shape[1])  # [N, 3, K-1] flattened: channel-major, as INRIA writes it
    columns = {"x": p["means"][:, 0], "y": p["means"][:, 1], "z": p["means"][:, 2]}
    columns.update({f"n{a}": np.zeros(n, np.float32) for a in "xyz"})
    columns.update({f"f_dc_{i}": p["sh0"][:, 0, i] for i in range(3)})
    columns.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
    columns["opacity"] = p["opacities"]
    columns.update({f"scale_{i}": p["scales"][:, i] for i in range(3)})
    columns.update({f"rot_{i}": p["quats"][:, i] for i in range(4)})
    return write_ply(path, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in columns.items()})


def load_ply(path: str | Path) -> dict[str, torch.Tensor]:
    """An INRIA-format 3DGS PLY (ours, the INRIA code's, nerfstudio's `ns-export gaussian-splat`, gsplat's)."""
    v = read_ply(path)
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [name for name in required if name not in v]
    if missing:
        raise PlyError(f"{path} is not a 3DGS splat PLY: missing properties {', '.join(missing)}")
    n = len(v["x"])
    if n == 0:
        raise PlyError(f"{path} holds no Gaussians")
    n_rest = len([k for k in v if k.startswith("f_rest_")])
    if n_rest % 3 or int(round(np.sqrt(n_rest // 3 + 1))) ** 2 != n_rest // 3 + 1:
        raise PlyError(f"{path}: {n_rest} f_rest properties is not 3·((degree+1)²-1) for any SH degree")
    rest = np.stack([v[f"f_rest_{i}"] for i in range(n_rest)], -1) if n_rest else np.zeros((n, 0), np.float32)

    def col(*names):
        return torch.tensor(np.stack([v[name] for name in names], -1), dtype=torch.float32)

    params = {
        "means": col("x", "y", "z"),
        "scales": col("scale_0", "scale_1", "scale_2"),
        "quats": col("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacities": torch.tensor(v["opacity"], dtype=torch.float32),
        "sh0": col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        "shN": torch.tensor(rest.reshape(n, 3, -1).transpose(0, 2, 1).copy(), dtype=torch.float32),
    }
    bad = ~torch.isfinite(torch.cat([t.reshape(n, -1) for t in params.values()], 1)).all(1)
    if bad.any():
        raise PlyError(f"{path}: {int(bad.sum())} Gaussians have non-finite values")
    return params


def sh_degree_of(params: dict[str, torch.Tensor]) -> int:
    return int(round(np.sqrt(params["shN"].shape[1] + 1))) - 1
