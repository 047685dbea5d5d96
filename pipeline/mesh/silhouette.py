"""Each object's pose and size refined against the capture photos: an upright prism (a box or an elliptic cylinder)
standing on the support, fitted so that its silhouette matches the object's pixels in every capture view.

Why. The splat's geometry of a small object is biased: 3DGS puts the Gaussians of a plain surface a few millimetres
behind it, so the rendered depth of a 25 mm cube lies ~4 mm inside each face and the fused cube comes out ~16 mm
wide, 18 mm tall, yawed at random (docs/mesh.md). Its *outline* in the photos is not biased: a cube 4 pixels wide in
64 calibrated views pins its size, centre and yaw to about a millimetre. Only what a real cell gives is read: the
photos, their camera poses (ChArUco), the robot's model at the capture's joint state (it hides objects), and the
reconstruction, which says where to look and gives the starting guess.

The object's pixels: per view, a window around the reconstruction's projection; the object's colours are k-means
clusters (3) of the pixel under its projected centre over the views (a lit top, faces in shade), the background's
k-means clusters (4) of each window's border. Each pixel is unmixed into object and background colour
(`object_fraction`, the best-fitting pair of the two palettes): how much of it is the object, 0 to 1, so that edge
pixels count by their share and a face in shade still counts whole; what the outline encloses (the convex hull of
its largest region) counts whole: a bin's pale floor unmixes as blue + table. An object whose colours differ from
the background's by shade only cannot be unmixed and is not fitted. Pixels where the robot or another object is
nearer the camera than this object are left out. The prism is projected (its silhouette
is the convex hull of its corners' projections), rasterised `supersample` times finer than the photo, averaged to
per-pixel coverage, and compared to the object's share (sum of squares); Nelder-Mead from the reconstruction's pose,
box and ellipse footprints, a box's yaw started twice, the best restarted once.

The stage uses a fit only where it explains the photos (`mesh.silhouette_min_iou` between the fitted silhouette and
the object's pixels over all views): an object that is not prism-like, or that the cameras barely see, keeps the
splat's geometry, and the stage says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FOOTPRINTS = ("box", "ellipse")
# an object whose colours are within this of the background's (RGB directions) cannot be unmixed from it: shade
# alone does not tell a tan cube from a tan table
MIN_COLOUR_ANGLE_DEG = 4.0


class SilhouetteUnavailable(ValueError):
    """The photos cannot refine this object (too few views see it whole, or its colour is the background's)."""
_ELLIPSE_SIDES = 24


@dataclass
class ObjectView:
    """One capture view's window on one object: its pixels' mask and which pixels the fit may use."""

    index: int
    u0: int
    v0: int
    mask: np.ndarray  # [h, w] 1 = the object's colour
    usable: np.ndarray  # [h, w] 1 = not hidden by the robot or another object


@dataclass
class PrismFit:
    """An upright prism on the support plane, in the plane's frame (x, y in the plane, z = its normal)."""

    footprint: str  # "box" | "ellipse"
    centre_xy: np.ndarray  # plane frame, metres
    yaw_rad: float  # the footprint's first axis
    size_m: np.ndarray  # footprint (along yaw, across) and height
    iou: float  # fitted silhouette vs the object's pixels, over all usable pixels of all views
    views: int
    losses: dict[str, float] = field(default_factory=dict)  # per footprint

    def summary(self) -> dict:
        return {"footprint": self.footprint, "size_mm": (1000 * self.size_m).round(2).tolist(),
                "yaw_deg": round(math.degrees(self.yaw_rad), 2), "iou": round(self.iou, 3), "views": self.views,
                "losses": {k: round(v, 2) for k, v in self.losses.items()}}


def footprint_outline(footprint: str, centre_xy, yaw_rad: float, size_xy) -> np.ndarray:
    """The footprint's corners [k, 2] in the plane frame (an ellipse: a 24-gon)."""
    if footprint == "box":
        unit = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    elif footprint == "ellipse":
        t = np.linspace(0.0, 2 * math.pi, _ELLIPSE_SIDES, endpoint=False)
        unit = 0.5 * np.stack([np.cos(t), np.sin(t)], 1)
    else:
        raise ValueError(f"footprint {footprint!r}: expected one of {FOOTPRINTS}")
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return (unit * np.asarray(size_xy)) @ np.array([[c, s], [-s, c]]) + np.asarray(centre_xy)


def prism_corners(plane, footprint: str, params) -> np.ndarray:
    """World-frame corners of the prism `params` = (x, y, yaw, a, b, h) standing on `plane`."""
    x, y, yaw, a, b, h = params
    outline = footprint_outline(footprint, (x, y), yaw, (abs(a), abs(b)))
    local = np.concatenate([np.c_[outline, np.zeros(len(outline))], np.c_[outline, np.full(len(outline), abs(h))]])
    return plane.to_world(local)


def prism_solid(plane, fit: PrismFit):
    """The fitted prism as a closed convex mesh in the world frame."""
    import trimesh

    corners = prism_corners(plane, fit.footprint, [*fit.centre_xy, fit.yaw_rad, *fit.size_m])
    return trimesh.Trimesh(corners).convex_hull


def _project(viewmat: np.ndarray, K: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (pixel centres at +0.5, as the capture and gsplat) and camera depth of world points."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    uv = cam[:, :2] / np.maximum(z, 1e-6)[:, None] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return uv, z


def object_fraction(pixels: np.ndarray, colours: np.ndarray, backgrounds: np.ndarray) -> np.ndarray:
    """How much of each pixel is the object [h, w] in [0, 1]: its RGB unmixed as p·object + q·background (least
    squares, for every pair of an object colour and a background colour; the best-fitting pair kept), fraction
    p / (p + q). A face in shade (a darker object colour) is still all object; a shadow on the table (a darker
    background) is none of it; an edge pixel half on the object is 0.5 where the face is as bright as its colour.
    Several object colours: a bin's lit floor and its walls in shade are not one colour scaled."""
    c = pixels.reshape(-1, 3).astype(np.float64)
    best_residual = np.full(len(c), np.inf)
    fraction = np.zeros(len(c))
    for colour in np.atleast_2d(colours):
        for background in np.atleast_2d(backgrounds):
            basis = np.stack([colour, background], 1)  # [3, 2]
            coef, *_ = np.linalg.lstsq(basis, c.T, rcond=None)
            coef = np.clip(coef, 0.0, None)
            residual = np.linalg.norm(c - (basis @ coef).T, axis=1)
            p, q = coef
            better = residual < best_residual
            best_residual[better] = residual[better]
            fraction[better] = (p / np.maximum(p + q, 1e-9))[better]
    return fraction.reshape(pixels.shape[:2])


def _colour_angle_deg(colours: np.ndarray, backgrounds: np.ndarray) -> float:
    """How far the object's most distinct colour is from the background colour nearest it (angle between RGB
    directions: brightness, i.e. shade, does not count)."""
    o = colours / np.maximum(np.linalg.norm(colours, axis=1, keepdims=True), 1e-9)
    b = backgrounds / np.maximum(np.linalg.norm(backgrounds, axis=1, keepdims=True), 1e-9)
    cosines = np.clip(o @ b.T, -1.0, 1.0)
    return float(np.degrees(np.arccos(cosines.max(1))).max())


def _clusters(samples: np.ndarray, k: int) -> np.ndarray:
    """Up to `k` k-means colour clusters (seeded); fewer when the samples hold fewer distinct colours."""
    from scipy.cluster.vq import kmeans2

    distinct = len(np.unique(samples.round(), axis=0))
    if distinct <= 1:
        return samples[:1].astype(np.float64)
    centres, labels = kmeans2(samples.astype(np.float64), min(k, distinct), seed=0, minit="++")
    return centres[np.bincount(labels, minlength=len(centres)) > 0]


def object_views(capture, corners: np.ndarray, occluders: list[np.ndarray], margin_m: float) -> list[ObjectView]:
    """Every capture view that sees the object's neighbourhood whole: its window (the projection of `corners`, the
    reconstruction's box, grown by `margin_m`), the object's colour mask and the usable pixels. Pixels where a point
    of `occluders` is nearer the camera than the object's centre are not usable (nor their neighbours)."""
    import cv2

    centre = corners.mean(0)
    radius = 0.5 * float(np.linalg.norm(corners.max(0) - corners.min(0))) + margin_m
    K = capture.K
    windows, object_colours, border_colours = [], [], []
    for index, frame in enumerate(capture.frames):
        viewmat = frame.viewmat()
        uv, z = _project(viewmat, K, centre[None])
        if z[0] <= radius:
            continue
        half = int(math.ceil(radius * K[0, 0] / z[0])) + 2
        u0, v0 = int(math.floor(uv[0, 0])) - half, int(math.floor(uv[0, 1])) - half
        if u0 < 0 or v0 < 0 or u0 + 2 * half > capture.width or v0 + 2 * half > capture.height:
            continue  # the object's surroundings leave the picture: its outline may be cut
        hidden = np.zeros((2 * half, 2 * half), np.uint8)
        for points in occluders:
            if len(points) == 0:
                continue
            puv, pz = _project(viewmat, K, points)
            ij = np.floor(puv - [u0, v0]).astype(int)
            keep = (pz > 0) & (pz < z[0]) & np.all((ij >= 0) & (ij < 2 * half), axis=1)
            hidden[ij[keep, 1], ij[keep, 0]] = 1
        hidden = cv2.dilate(hidden, np.ones((3, 3), np.uint8)).astype(bool)
        features = capture.image(index)[v0:v0 + 2 * half, u0:u0 + 2 * half].astype(np.float64)
        cu, cv_ = int(math.floor(uv[0, 0])) - u0, int(math.floor(uv[0, 1])) - v0
        if not hidden[cv_, cu]:
            object_colours.append(features[cv_, cu])
        border = np.ones(hidden.shape, bool)
        border[2:-2, 2:-2] = False
        border_colours.append(features[border & ~hidden])
        windows.append((index, u0, v0, features, hidden))
    if not windows or len(object_colours) < 3:
        return []  # nothing to fit: the caller counts the views
    colours = _clusters(np.array(object_colours), 3)
    background = _clusters(np.concatenate(border_colours), 4)
    angle = _colour_angle_deg(colours, background)
    if angle < MIN_COLOUR_ANGLE_DEG:
        raise SilhouetteUnavailable(f"its colours are the background's but for brightness ({angle:.1f}° apart in RGB, "
                                    f"< {MIN_COLOUR_ANGLE_DEG}°): its pixels cannot be told from the table's")
    views = []
    for index, u0, v0, pixels, hidden in windows:
        share = object_fraction(pixels, colours, background)
        # what the object's outline encloses is the object: a bin's lit floor, paler than its walls, unmixes as
        # blue + table and would read as a hole (the fit's silhouettes are convex: so is the outline filled here)
        share = np.maximum(share, _convex_fill(share > 0.5))
        views.append(ObjectView(index, u0, v0, share.astype(np.float32), (~hidden).astype(np.float32)))
    return views


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    """1 on the pixels inside the convex hull of `mask`'s largest connected region, else 0."""
    import cv2
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    ij = np.argwhere(labels == largest)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(filled, cv2.convexHull(ij[:, ::-1].astype(np.int32)), 1)
    return filled.astype(np.float64)


def coverage(capture, view: ObjectView, corners: np.ndarray, supersample: int) -> np.ndarray:
    """Fraction of each window pixel the convex solid with these corners covers in the view."""
    import cv2

    h, w = view.mask.shape
    uv, _ = _project(capture.frames[view.index].viewmat(), capture.K, corners)
    local = (uv - [view.u0, view.v0]) * supersample
    hull = cv2.convexHull(local.astype(np.float32)).reshape(-1, 2)
    canvas = np.zeros((h * supersample, w * supersample), np.uint8)
    # 4 fractional bits: cv2 rasterises at 1/16 of a (supersampled) pixel; the fill is of pixel centres
    cv2.fillConvexPoly(canvas, np.round((hull - 0.5) * 16).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)
    return canvas.reshape(h, supersample, w, supersample).mean((1, 3))


def _loss(params, capture, views, plane, footprint, supersample) -> float:
    corners = prism_corners(plane, footprint, params)
    return float(sum((v.usable * (coverage(capture, v, corners, supersample) - v.mask) ** 2).sum() for v in views))


def silhouette_iou(capture, views, corners, supersample: int) -> float:
    inter = union = 0.0
    for v in views:
        fitted = coverage(capture, v, corners, supersample) >= 0.5
        seen = v.mask > 0.5
        inter += float((v.usable * (fitted & seen)).sum())
        union += float((v.usable * (fitted | seen)).sum())
    return inter / union if union else 0.0


def fit_prism(capture, plane, centre_xy, yaw_rad: float, size_m, occluders: list[np.ndarray], margin_m: float = 0.02,
              supersample: int = 8, min_views: int = 8) -> PrismFit:
    """The prism that best explains the object's pixels, from the reconstruction's footprint centre, yaw and size
    (plane frame). SilhouetteUnavailable when fewer than `min_views` views see the object whole or its colour cannot
    be told from the background's."""
    from scipy.optimize import minimize

    start = np.array([*centre_xy, yaw_rad, *size_m], dtype=float)
    views = object_views(capture, prism_corners(plane, "box", start), occluders, margin_m)
    if len(views) < min_views:
        raise SilhouetteUnavailable(f"{len(views)} capture views see it and its surroundings whole, fewer than "
                                    f"{min_views}")
    best, losses = None, {}
    # a square footprint's yaw repeats every 90 degrees and the reconstruction's is often ~45 off: two yaw starts
    starts = [("box", 0.0), ("box", math.pi / 4), ("ellipse", 0.0)]
    for footprint, turn in starts:
        x0 = start.copy()
        x0[2] += turn
        result = minimize(_loss, x0, args=(capture, views, plane, footprint, supersample), method="Nelder-Mead",
                          options={"xatol": 1e-4, "fatol": 1e-3, "maxiter": 800})
        losses[footprint] = min(losses.get(footprint, math.inf), float(result.fun))
        if best is None or result.fun < best[0]:
            best = (float(result.fun), footprint, result.x)
    _, footprint, x = best
    # Nelder-Mead's simplex shrinks onto a ridge of the piecewise loss; restarted once from its end it moves on
    result = minimize(_loss, x, args=(capture, views, plane, footprint, supersample), method="Nelder-Mead",
                      options={"xatol": 1e-5, "fatol": 1e-4, "maxiter": 800})
    if result.fun < best[0]:
        x = result.x
        losses[footprint] = float(result.fun)
    corners = prism_corners(plane, footprint, x)
    return PrismFit(footprint=footprint, centre_xy=x[:2], yaw_rad=float(x[2]), size_m=np.abs(x[3:]),
                    iou=silhouette_iou(capture, views, corners, supersample), views=len(views), losses=losses)


def aligned_to(fit: PrismFit, yaw_rad: float) -> PrismFit:
    """The same prism described with the footprint axis nearest `yaw_rad` (a box turned by 90 degrees with its sides
    swapped is the same box), yaw in [-pi, pi)."""
    turns = round((yaw_rad - fit.yaw_rad) / (math.pi / 2))
    size = fit.size_m.copy()
    if turns % 2:
        size[[0, 1]] = size[[1, 0]]
    yaw = fit.yaw_rad + turns * math.pi / 2
    yaw = (yaw + math.pi) % (2 * math.pi) - math.pi
    return PrismFit(fit.footprint, fit.centre_xy, yaw, size, fit.iou, fit.views, fit.losses)


def hollow_top(local_points: np.ndarray, centre_xy, yaw_rad: float, size_m, inner: float = 0.5,
               level: float = 0.5) -> bool:
    """Whether the reconstruction's surface over the middle of a footprint (the central `inner` of each side; plane
    frame points, `local_points`) stays below `level` of the object's height: a bin or a cup, whose silhouettes
    cannot show their hollow. Too few points there to tell: not hollow."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    uv = (local_points[:, :2] - np.asarray(centre_xy)) @ np.array([[c, s], [-s, c]]).T
    middle = np.all(np.abs(uv) < inner * np.asarray(size_m[:2]) / 2, axis=1)
    if middle.sum() < 10:
        return False
    return bool(np.quantile(local_points[middle, 2], 0.9) < level * size_m[2])


def fit_solid_into(solid, plane, yaw_rad: float, fit: PrismFit):
    """A hollow solid (a bin) stretched so that its extent along its footprint axes (`yaw_rad`, plane frame) and its
    height become the fitted prism's: the photos correct where it stands and how big it is, the reconstruction
    keeps its shape (walls, floor)."""
    fit = aligned_to(fit, yaw_rad)
    local = plane.to_plane(np.asarray(solid.vertices))
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    uv = local[:, :2] @ np.array([[c, s], [-s, c]]).T  # along and across the footprint's first axis
    lo, hi = uv.min(0), uv.max(0)
    uv = ((uv - lo) / np.maximum(hi - lo, 1e-9) - 0.5) * fit.size_m[:2]
    z = local[:, 2] / max(float(local[:, 2].max()), 1e-9) * fit.size_m[2]
    c, s = math.cos(fit.yaw_rad), math.sin(fit.yaw_rad)
    xy = uv @ np.array([[c, s], [-s, c]]) + fit.centre_xy
    moved = solid.copy()
    moved.vertices = plane.to_world(np.c_[xy, z])
    return moved
