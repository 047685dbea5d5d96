"""3D Gaussian splat rendering: gsplat on CUDA, and a compact pure-PyTorch rasterizer with the same math on CPU.

gsplat has no CPU path (its `rasterization` calls CUDA kernels even in the "torch" variant), so CPU training uses
`rasterize_torch`, which reproduces gsplat 1.5.3's EWA projection (`fully_fused_projection`: the clamped Jacobian,
the 0.3 px² low-pass `eps2d`, the opacity-aware 3.33σ bounding box, the "antialiased" opacity compensation) and its
front-to-back compositing (alpha = min(0.999, o·exp(-σ)), skipped below 1/255, a pixel stops before transmittance
would fall to 1e-4). It takes and returns the same tensors as `gsplat.rasterization`, including the `info` dict that
gsplat's densification strategies read, so the trainer is the same code on both devices.

How the CPU version stays fast enough: instead of gsplat's 16x16 tiles and per-pixel loops, each Gaussian is paired
with the 2x2-pixel tiles its bounding box touches (outside the box alpha < 1/255 by construction, so nothing is
lost), the (tile, Gaussian) pairs are sorted by tile with depth order kept, and transmittance is a segmented
cumulative sum of log(1 - alpha) in float64. Every step is a flat tensor op, differentiated by autograd.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD
MAX_ALPHA = 0.999
TRANSMITTANCE_STOP = 1e-4
EXTEND_SIGMAS = 3.33  # gsplat's bounding-box extent in standard deviations

RenderMode = Literal["RGB", "RGB+ED"]


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(w, x, y, z) quaternions, normalized first, to rotation matrices [..., 3, 3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))


# Real spherical-harmonics basis up to degree 3 (the 3DGS / gsplat convention).
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
          1.445305721320277, -0.5900435899266435)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour [..., 3] from SH coefficients [..., K, 3] (K ≥ (degree+1)²) seen along `dirs` [..., 3]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree {degree} is not supported (0..3)")
    if coeffs.shape[-2] < (degree + 1) ** 2:
        raise ValueError(f"degree {degree} needs {(degree + 1) ** 2} coefficients, got {coeffs.shape[-2]}")
    basis = [torch.full_like(dirs[..., 0], _SH_C0)]
    if degree >= 1:
        x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
        basis += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
        if degree >= 2:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            basis += [_SH_C2[0] * xy, _SH_C2[1] * yz, _SH_C2[2] * (2 * zz - xx - yy), _SH_C2[3] * xz,
                      _SH_C2[4] * (xx - yy)]
            if degree >= 3:
                basis += [_SH_C3[0] * y * (3 * xx - yy), _SH_C3[1] * xy * z, _SH_C3[2] * y * (4 * zz - xx - yy),
                          _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _SH_C3[4] * x * (4 * zz - xx - yy),
                          _SH_C3[5] * z * (xx - yy), _SH_C3[6] * x * (xx - 3 * yy)]
    basis = torch.stack(basis, dim=-1)  # [..., (degree+1)²]
    return (basis[..., None] * coeffs[..., : basis.shape[-1], :]).sum(dim=-2)


def project_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor, K: Tensor,
                      width: int, height: int, near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
                      antialiased: bool = False) -> dict[str, Tensor]:
    """gsplat's EWA projection for one camera (`viewmat`: world-to-camera, OpenCV convention).

    Returns means2d [N, 2], conics [N, 3] (upper triangle of the inverse 2D covariance), depths [N], radii [N, 2]
    (int32, 0 = culled), opacities [N] (times the antialiasing compensation when `antialiased`)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    mean_c = means @ R.T + t
    depths = mean_c[:, 2]
    in_depth = (depths > near_plane) & (depths < far_plane)
    tz = torch.where(in_depth, depths, torch.ones_like(depths))  # culled ones get a harmless value (no NaN grads)
    rot = quat_to_rotmat(quats)
    M = rot * scales[:, None, :]
    cov_c = R @ (M @ M.transpose(1, 2)) @ R.T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    # Far off-screen Gaussians use the Jacobian at the clamped direction (as gsplat does): bounded 2D footprints.
    tx = tz * torch.clamp(mean_c[:, 0] / tz, -(cx / fx + 0.3 * tan_fovx), (width - cx) / fx + 0.3 * tan_fovx)
    ty = tz * torch.clamp(mean_c[:, 1] / tz, -(cy / fy + 0.3 * tan_fovy), (height - cy) / fy + 0.3 * tan_fovy)
    zeros = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zeros, -fx * tx / tz**2, zeros, fy / tz, -fy * ty / tz**2], -1).reshape(-1, 2, 3)
    cov2d = J @ cov_c @ J.transpose(1, 2)
    means2d = torch.stack([fx * mean_c[:, 0] / tz + cx, fy * mean_c[:, 1] / tz + cy], -1)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    if antialiased:
        opacities = opacities * torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))
    with torch.no_grad():
        valid = valid & (opacities >= ALPHA_THRESHOLD)
        extend = torch.clamp(torch.sqrt(2 * torch.log(torch.clamp(opacities, min=ALPHA_THRESHOLD)
                                                      / ALPHA_THRESHOLD)), max=EXTEND_SIGMAS)
        radii = torch.stack([torch.ceil(extend * torch.sqrt(a.clamp(min=0))),
                             torch.ceil(extend * torch.sqrt(c.clamp(min=0)))], -1)
        valid = valid & (radii > 0).any(-1)
        x, y = means2d[:, 0], means2d[:, 1]
        valid = valid & (x + radii[:, 0] > 0) & (x - radii[:, 0] < width) & (y + radii[:, 1] > 0) & (y - radii[:, 1] < height)
        radii = torch.where(valid[:, None], radii, torch.zeros_like(radii)).int()
    return {"means2d": means2d, "conics": conics, "depths": depths, "radii": radii, "opacities": opacities}


@torch.no_grad()
def _tile_pairs(means2d: Tensor, depths: Tensor, radii: Tensor, width: int, height: int, s: int) -> dict[str, Tensor]:
    """Each visible Gaussian paired with the s x s tiles its bounding box touches, sorted by tile (depth order kept
    within a tile), with the pixel coordinates of every pair's tile slots."""
    dev = means2d.device
    tiles_w = math.ceil(width / s)
    ids = torch.nonzero((radii > 0).all(-1)).squeeze(1)
    ids = ids[torch.argsort(depths[ids].detach())]  # near to far: pairs are generated (and stay) in depth order
    mx, my = means2d[ids, 0].detach(), means2d[ids, 1].detach()
    rx, ry = radii[ids, 0].float(), radii[ids, 1].float()
    # pixels whose centre (px + 0.5) lies inside [mean - radius, mean + radius], then the tiles holding them
    x0 = torch.clamp(torch.ceil(mx - rx - 0.5), 0, width - 1).long()
    x1 = torch.clamp(torch.floor(mx + rx - 0.5), -1, width - 1).long()
    y0 = torch.clamp(torch.ceil(my - ry - 0.5), 0, height - 1).long()
    y1 = torch.clamp(torch.floor(my + ry - 0.5), -1, height - 1).long()
    has_pixels = (x1 >= x0) & (y1 >= y0)
    tx0, ty0 = x0 // s, y0 // s
    ntx = torch.where(has_pixels, x1 // s - tx0 + 1, 0)
    nty = torch.where(has_pixels, y1 // s - ty0 + 1, 0)
    counts = ntx * nty
    row_gauss = torch.repeat_interleave(torch.arange(len(ids), device=dev), counts)
    offset = torch.arange(len(row_gauss), device=dev) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    row_tile = (ty0[row_gauss] + offset // ntx[row_gauss]) * tiles_w + tx0[row_gauss] + offset % ntx[row_gauss]
    order = torch.sort(row_tile, stable=True).indices  # by tile; depth order kept within a tile
    row_gauss, row_tile = row_gauss[order], row_tile[order]
    first_of_tile = torch.ones_like(row_tile, dtype=torch.bool)
    first_of_tile[1:] = row_tile[1:] != row_tile[:-1]
    segment_start = torch.cummax(torch.where(first_of_tile, torch.arange(len(row_tile), device=dev), 0), 0).values
    local = torch.arange(s * s, device=dev)
    px = (row_tile % tiles_w)[:, None] * s + local % s  # [rows, s*s]
    py = (row_tile // tiles_w)[:, None] * s + local // s
    return {"ids": ids, "row_ids": torch.index_select(ids, 0, row_gauss), "row_tile": row_tile, "px": px, "py": py,
            "on_image": (px < width) & (py < height), "segment_start": segment_start}


def _untile(out: Tensor, width: int, height: int, s: int) -> Tensor:
    """[n_tiles, s*s, C] tile slots back to an [H, W, C] image."""
    tiles_w, tiles_h, C = math.ceil(width / s), math.ceil(height / s), out.shape[-1]
    out = out.reshape(tiles_h, tiles_w, s, s, C).permute(0, 2, 1, 3, 4).reshape(tiles_h * s, tiles_w * s, C)
    return out[:height, :width]


def composite(means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, depths: Tensor, radii: Tensor,
              width: int, height: int, tile_size: int = 2) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of the projected Gaussians with radii > 0: features [H, W, D], alpha [H, W, 1].

    gsplat's per-pixel loop, vectorized: each Gaussian is paired with the small tiles its bounding box touches,
    pairs are sorted by tile (depth order kept), and each pair is evaluated at the tile's pixels. The tile size only
    changes how much work is wasted on pixels outside a box (where alpha < 1/255 is skipped anyway), not the image."""
    D = features.shape[-1]
    s = tile_size
    pairs = _tile_pairs(means2d, depths, radii, width, height, s)
    packed = torch.cat([means2d, conics, opacities[:, None], features], -1)
    out = _blend(packed, pairs["row_ids"], pairs["row_tile"], pairs["px"], pairs["py"], pairs["on_image"],
                 pairs["segment_start"], math.ceil(height / s) * math.ceil(width / s))
    if len(pairs["ids"]) == 0:
        out = out + packed.sum() * 0  # an empty view still has a graph to backpropagate through
    out = _untile(out, width, height, s)
    return out[..., :D], out[..., D:]


def _alpha_and_log_T(row: Tensor, px: Tensor, py: Tensor, on_image: Tensor, segment_start: Tensor):
    """Per (pair, pixel slot): alpha, log(1 - alpha) and log transmittance before the pair, as gsplat computes them.
    `row` holds [mean2d (2), conic (3), opacity (1), ...] per pair."""
    dx = row[:, 0:1] - (px + 0.5)
    dy = row[:, 1:2] - (py + 0.5)
    sigma = 0.5 * (row[:, 2:3] * dx * dx + row[:, 4:5] * dy * dy) + row[:, 3:4] * dx * dy
    alpha = torch.clamp(row[:, 5:6] * torch.exp(-sigma), max=MAX_ALPHA)
    alpha = alpha * ((sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & on_image)
    log_keep = torch.log1p(-alpha).double()
    before = torch.cumsum(log_keep, 0) - log_keep  # exclusive running sum down all rows, per pixel slot ...
    log_T = before - torch.index_select(before, 0, segment_start)  # ... restarted at each tile: log T before a pair
    return alpha, log_keep, log_T


def _blend(packed: Tensor, row_ids: Tensor, row_tile: Tensor, px: Tensor, py: Tensor, on_image: Tensor,
           segment_start: Tensor, n_tiles: int) -> Tensor:
    """The differentiable part of `composite`: per (tile row, pixel slot) alpha, transmittance and weighted sums.
    Returns [n_tiles, s*s, D + 1] (features, then alpha)."""
    row = torch.index_select(packed, 0, row_ids)  # one gather for every pair
    alpha, log_keep, log_T = _alpha_and_log_T(row, px, py, on_image, segment_start)
    included = (log_T + log_keep) > math.log(TRANSMITTANCE_STOP)  # gsplat stops before T would reach 1e-4
    weight = alpha * torch.exp(log_T).float() * included  # [rows, s*s]
    slots = px.shape[1]
    features = torch.zeros(n_tiles, slots, packed.shape[1] - 6, dtype=packed.dtype, device=packed.device)
    features = features.index_add(0, row_tile, weight[..., None] * row[:, None, 6:])
    alphas = torch.zeros(n_tiles, slots, dtype=packed.dtype, device=packed.device).index_add(0, row_tile, weight)
    return torch.cat([features, alphas[..., None]], -1)


@torch.no_grad()
def render_surface_depth(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmat: Tensor, K: Tensor,
                         width: int, height: int, band: tuple[float, float] = (0.01, 0.015), tile_size: int = 2
                         ) -> tuple[Tensor, Tensor]:
    """Depth of the first surface each pixel sees [H, W] (metres along the camera z axis), and the pixel's alpha.

    Neither of gsplat's depth renders suits geometry. Expected depth (`ED`) averages every Gaussian along the ray,
    so whatever lies behind a partly transparent surface (the floor under a table) drags it back by centimetres.
    Median depth (the Gaussian where transmittance crosses 0.5) lands on the *front* of a surface made of several
    semi-transparent Gaussians, whose centres scatter a few millimetres either side of it. Here: the median depth
    locates the first surface, then the opacity-weighted mean depth of the Gaussians from `band[0]` in front of it
    to `band[1]` behind it (weighted by alpha, not by alpha x transmittance, so the ones behind count as much as
    the ones in front) estimates where it is. The band must stay thinner than the objects: behind a cube's top lies
    the table, which the camera does not see there. Pixels that no Gaussian reaches (transmittance never crosses
    0.5) get depth 0."""
    proj = project_gaussians(means, quats, scales, opacities, viewmat, K, width, height)
    s = tile_size
    pairs = _tile_pairs(proj["means2d"], proj["depths"], proj["radii"], width, height, s)
    n_tiles, slots = math.ceil(height / s) * math.ceil(width / s), s * s
    packed = torch.cat([proj["means2d"], proj["conics"], proj["opacities"][:, None], proj["depths"][:, None]], -1)
    row = torch.index_select(packed, 0, pairs["row_ids"])
    alpha, log_keep, log_T = _alpha_and_log_T(row, pairs["px"], pairs["py"], pairs["on_image"], pairs["segment_start"])
    included = (log_T + log_keep) > math.log(TRANSMITTANCE_STOP)
    weight = alpha * torch.exp(log_T).float() * included
    depth, tile = row[:, 6:7], pairs["row_tile"]
    half = math.log(0.5)
    crossing = ((log_T >= half) & (log_T + log_keep < half) & included).to(depth.dtype)  # one pair per pixel at most

    def per_pixel(values: Tensor) -> Tensor:
        return torch.zeros(n_tiles, slots, dtype=values.dtype, device=values.device).index_add(0, tile, values)

    median = per_pixel(crossing * depth)
    offset = depth - torch.index_select(median, 0, tile)
    near = (offset > -band[0]) & (offset < band[1]) & (alpha > 0)
    near_alpha = alpha * near
    surface = per_pixel(near_alpha * depth) / per_pixel(near_alpha).clamp(min=1e-12)
    surface = torch.where(median > 0, surface, torch.zeros_like(surface))
    out = _untile(torch.stack([surface, per_pixel(weight)], -1), width, height, s)
    return out[..., 0], out[..., 1]


def rasterize_torch(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                    viewmats: Tensor, Ks: Tensor, width: int, height: int, near_plane: float = 0.01,
                    far_plane: float = 1e10, sh_degree: int | None = None, backgrounds: Tensor | None = None,
                    render_mode: RenderMode = "RGB", rasterize_mode: str = "classic", eps2d: float = 0.3,
                    ) -> tuple[Tensor, Tensor, dict]:
    """`gsplat.rasterization` (unpacked, pinhole) in plain PyTorch. Shapes as gsplat: means [N, 3], quats [N, 4]
    (w, x, y, z), scales [N, 3], opacities [N], colors [N, K, 3] with `sh_degree` or [N, 3] without, viewmats
    [C, 4, 4], Ks [C, 3, 3], backgrounds [C, 3]. Returns renders [C, H, W, 3 or 4], alphas [C, H, W, 1], info."""
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode {rasterize_mode!r}: expected 'classic' or 'antialiased'")
    per_camera = [project_gaussians(means, quats, scales, opacities, viewmats[cam], Ks[cam], width, height,
                                    near_plane, far_plane, eps2d, antialiased=rasterize_mode == "antialiased")
                  for cam in range(viewmats.shape[0])]
    # Stacked first and sliced per camera below, so the gradient of info["means2d"] (which gsplat's densification
    # reads after backward) is the one the image loss produced.
    info = {key: torch.stack([p[key] for p in per_camera]) for key in per_camera[0]}
    info.update(width=width, height=height, n_cameras=viewmats.shape[0], gaussian_ids=None)
    renders, alphas = [], []
    for cam in range(viewmats.shape[0]):
        if sh_degree is None:
            rgb = colors
        else:
            cam_pos = -viewmats[cam, :3, :3].T @ viewmats[cam, :3, 3]
            rgb = torch.clamp_min(spherical_harmonics(sh_degree, means - cam_pos, colors) + 0.5, 0.0)
        features = torch.cat([rgb, info["depths"][cam][:, None]], -1) if render_mode == "RGB+ED" else rgb
        image, alpha = composite(info["means2d"][cam], info["conics"][cam], info["opacities"][cam], features,
                                 info["depths"][cam], info["radii"][cam], width, height)
        if render_mode == "RGB+ED":
            image = torch.cat([image[..., :3], image[..., 3:] / alpha.clamp(min=1e-10)], -1)
        if backgrounds is not None:
            image = torch.cat([image[..., :3] + backgrounds[cam] * (1 - alpha), image[..., 3:]], -1)
        renders.append(image), alphas.append(alpha)
    return torch.stack(renders), torch.stack(alphas), info


def rasterize(backend: Literal["gsplat", "torch"], **kwargs) -> tuple[Tensor, Tensor, dict]:
    """One entry point for both renderers (keyword arguments of `gsplat.rasterization`)."""
    if backend == "gsplat":
        from gsplat import rasterization

        return rasterization(packed=False, **kwargs)
    return rasterize_torch(**kwargs)
