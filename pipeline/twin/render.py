"""Look at the twin through its own cameras: read the splat prims and camera prims back from `twin.usd` and render
them with the splat stage's rasterizer (PyTorch; gsplat's math), so what is scored is what the file holds."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.twin.author import CAPTURE_PATH, camera_intrinsics

_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def _world(prim) -> np.ndarray:
    from pxr import Usd, UsdGeom

    return np.array(UsdGeom.Xformable(prim).ComputeLocalToWorldTransform(Usd.TimeCode.Default())).T


def read_splats(stage, include_invisible: bool = False) -> dict[str, torch.Tensor]:
    """Every ParticleField3DGaussianSplat prim, in world coordinates, concatenated (rasterizer layout: quats w-first,
    linear scales, opacities in [0, 1], SH coefficients [N, K, 3]). Invisible prims are skipped unless asked for."""
    from pxr import Usd, UsdGeom, UsdVol

    parts = []
    for prim in Usd.PrimRange(stage.GetPseudoRoot()):
        if not prim.IsA(UsdVol.ParticleField3DGaussianSplat):
            continue
        visible = UsdGeom.Imageable(prim).ComputeVisibility() != UsdGeom.Tokens.invisible
        if not (visible or include_invisible):
            continue
        splat = UsdVol.ParticleField3DGaussianSplat(prim)
        means = np.asarray(splat.GetPositionsAttr().Get(), dtype=np.float64).reshape(-1, 3)
        if not len(means):
            continue
        m = _world(prim)
        rotation = m[:3, :3]
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6):
            raise ValueError(f"{prim.GetPath()}: splat prims with scale or shear are not supported")
        degree = splat.GetRadianceSphericalHarmonicsDegreeAttr().Get()
        if degree and not np.allclose(rotation, np.eye(3), atol=1e-6):
            raise ValueError(f"{prim.GetPath()}: a rotated splat prim needs its SH coefficients rotated (not done)")
        quats = np.array([[q.GetReal(), *q.GetImaginary()] for q in splat.GetOrientationsAttr().Get()])
        if not np.allclose(rotation, np.eye(3), atol=1e-9):
            from scipy.spatial.transform import Rotation

            r = Rotation.from_matrix(rotation) * Rotation.from_quat(quats[:, [1, 2, 3, 0]])
            quats = r.as_quat()[:, [3, 0, 1, 2]]
        sh = np.asarray(splat.GetRadianceSphericalHarmonicsCoefficientsAttr().Get(), dtype=np.float32)
        parts.append({
            "means": means @ rotation.T + m[:3, 3],
            "quats": quats,
            "scales": np.asarray(splat.GetScalesAttr().Get(), dtype=np.float64).reshape(-1, 3),
            "opacities": np.asarray(splat.GetOpacitiesAttr().Get(), dtype=np.float64),
            "sh": sh.reshape(len(means), (degree + 1) ** 2, 3),
        })
    if not parts:
        raise ValueError("the twin holds no Gaussians")
    degree = max(p["sh"].shape[1] for p in parts)
    for p in parts:  # pad lower-degree prims with zero coefficients
        p["sh"] = np.concatenate([p["sh"], np.zeros((len(p["sh"]), degree - p["sh"].shape[1], 3))], 1)
    return {k: torch.tensor(np.concatenate([p[k] for p in parts]), dtype=torch.float32) for k in parts[0]}


def read_cameras(stage, root: str = CAPTURE_PATH) -> list[dict]:
    """The cameras under `root` (the capture rig): name, K, width, height, camera-to-world (OpenGL), image path."""
    from pxr import UsdGeom

    top = stage.GetPrimAtPath(root)
    if not top.IsValid():
        raise ValueError(f"the twin has no {root}")
    cams = []
    for prim in top.GetChildren():
        if not prim.IsA(UsdGeom.Camera):
            continue
        K, w, h = camera_intrinsics(prim)
        cams.append({"name": prim.GetName(), "K": K, "width": w, "height": h, "camera_to_world": _world(prim),
                     "image": prim.GetCustomDataByKey("twinloop:image")})
    return cams


@torch.no_grad()
def render(g: dict[str, torch.Tensor], K: np.ndarray, width: int, height: int, camera_to_world: np.ndarray,
           background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """HxWx3 float image in [0, 1] of the Gaussians `g` seen by a pinhole camera (OpenGL camera-to-world)."""
    from pipeline.splat.rasterize import rasterize_torch

    viewmat = np.linalg.inv(camera_to_world @ _GL_TO_CV)
    degree = int(round(np.sqrt(g["sh"].shape[1]))) - 1
    image, _, _ = rasterize_torch(
        means=g["means"], quats=g["quats"], scales=g["scales"], opacities=g["opacities"], colors=g["sh"],
        viewmats=torch.tensor(viewmat, dtype=torch.float32)[None], Ks=torch.tensor(K, dtype=torch.float32)[None],
        width=width, height=height, sh_degree=degree, backgrounds=torch.tensor([background], dtype=torch.float32))
    return image[0].clamp(0, 1).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(1 / mse) if mse > 0 else float("inf")
