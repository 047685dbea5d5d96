"""Split a reconstructed table-top scene into its support plane and the objects standing on it, and turn each part
into a closed solid that convex decomposition can work on.

Objects on a table are seen from above, so each becomes a height field over the plane, extruded down to it: exact
for what has no overhang (a cube, a bin, most table-top things), and it keeps cavities that open upwards (a bin
stays a bin, not a block). Surfaces hidden under an overhang cannot be seen by any camera anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.mesh.config import MeshConfig
from pipeline.mesh.fusion import MeshError


@dataclass(frozen=True)
class SupportPlane:
    """n·x + d = 0 with n pointing up; `rotation` columns are the plane frame's axes (x, y in the plane, z = n)."""

    normal: np.ndarray
    offset: float
    origin: np.ndarray  # a point of the plane under the support's centre
    rotation: np.ndarray
    inlier_fraction: float

    def height(self, points: np.ndarray) -> np.ndarray:
        return points @ self.normal + self.offset

    def to_plane(self, points: np.ndarray) -> np.ndarray:
        return (points - self.origin) @ self.rotation

    def to_world(self, points: np.ndarray) -> np.ndarray:
        return points @ self.rotation.T + self.origin

    @property
    def tilt_deg(self) -> float:
        return math.degrees(math.acos(min(1.0, abs(float(self.normal[2])))))


def fit_support_plane(points: np.ndarray, cfg: MeshConfig, seed: int = 0) -> tuple[SupportPlane, np.ndarray]:
    """The largest near-horizontal plane (RANSAC, then least squares on its inliers) and its inlier mask.

    Planes found first but tilted more than `plane_max_tilt_deg` (a wall, a box side) are set aside and the search
    goes on among the remaining points, three times at most."""
    import open3d as o3d

    if len(points) < 3:
        raise MeshError("the reconstruction has no surface to fit a support plane to: the splat renders nothing in "
                        "the workspace (check mesh.workspace_min/max and the splat)")
    o3d.utility.random.seed(seed)
    remaining = np.arange(len(points))
    rejected = []
    for _ in range(3):
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[remaining]))
        model, inliers = cloud.segment_plane(cfg.plane_distance_m, 3, cfg.plane_ransac_iterations)
        inliers = remaining[np.asarray(inliers, dtype=np.int64)]
        normal = np.asarray(model[:3], dtype=float)
        tilt = math.degrees(math.acos(min(1.0, abs(normal[2]) / np.linalg.norm(normal))))
        fraction = len(inliers) / len(points)
        if fraction < cfg.plane_min_inlier_fraction:
            break
        if tilt <= cfg.plane_max_tilt_deg:
            return _refine(points, inliers, cfg)
        rejected.append(f"{tilt:.0f} deg tilt ({100 * fraction:.0f} % of points)")
        remaining = np.setdiff1d(remaining, inliers)
        if len(remaining) < 3:
            break
    found = "; planes found: " + ", ".join(rejected) if rejected else ""
    raise MeshError(f"no support plane: no plane within {cfg.plane_max_tilt_deg} deg of horizontal holds "
                    f">= {100 * cfg.plane_min_inlier_fraction:.0f} % of the reconstructed points{found}")


def _refine(points: np.ndarray, inliers: np.ndarray, cfg: MeshConfig) -> tuple[SupportPlane, np.ndarray]:
    # least squares on the RANSAC inliers, then once more on the points within the threshold of that plane
    for _ in range(2):
        p = points[inliers]
        centroid = p.mean(0)
        normal = np.linalg.svd(p - centroid, full_matrices=False)[2][2]
        normal = normal if normal[2] > 0 else -normal
        offset = -float(normal @ centroid)
        inliers = np.nonzero(np.abs(points @ normal + offset) <= cfg.plane_distance_m)[0]
    x_axis = np.array([1.0, 0.0, 0.0]) - normal[0] * normal
    x_axis /= np.linalg.norm(x_axis)
    rotation = np.stack([x_axis, np.cross(normal, x_axis), normal], 1)
    origin = centroid - (normal @ centroid + offset) * normal
    mask = np.zeros(len(points), dtype=bool)
    mask[inliers] = True
    return SupportPlane(normal, offset, origin, rotation, float(mask.mean())), mask


def footprint_rectangle(points_2d: np.ndarray, trim: float = 0.005) -> tuple[np.ndarray, np.ndarray, float]:
    """Minimum-area rectangle around the (trimmed) 2D points: centre, size, angle in radians."""
    import cv2

    if trim > 0 and len(points_2d) > 20:
        lo, hi = np.quantile(points_2d, [trim, 1 - trim], axis=0)
        points_2d = points_2d[np.all((points_2d >= lo) & (points_2d <= hi), axis=1)]
    (cx, cy), (w, h), angle = cv2.minAreaRect(points_2d.astype(np.float32))
    return np.array([cx, cy]), np.array([w, h]), math.radians(angle)


def support_box(plane: SupportPlane, inlier_points: np.ndarray, thickness: float):
    """The support as a box: its top is the plane, its outline the inliers' minimum-area rectangle."""
    import trimesh

    centre, size, angle = footprint_rectangle(plane.to_plane(inlier_points)[:, :2])
    c, s = math.cos(angle), math.sin(angle)
    local = np.eye(4)
    local[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    local[:3, 3] = [centre[0], centre[1], -thickness / 2]
    box = trimesh.creation.box(extents=(size[0], size[1], thickness), transform=local)
    return trimesh.Trimesh(plane.to_world(box.vertices), box.faces)


def cluster_objects(points: np.ndarray, plane: SupportPlane, support_points: np.ndarray, cfg: MeshConfig
                    ) -> list[np.ndarray]:
    """Index arrays of the objects standing on the support, largest first: the points higher than
    `object_min_height_m` over the support's outline, grouped by their footprints on the plane (cells of one voxel,
    closed over `cluster_eps_m`), so the thin walls of a bin that the reconstruction breaks up stay one object."""
    from matplotlib.path import Path as Polygon
    from scipy import ndimage

    heights = plane.height(points)
    candidates = np.nonzero(heights > cfg.object_min_height_m)[0]
    if len(candidates) == 0:
        return []
    centre, size, angle = footprint_rectangle(plane.to_plane(support_points)[:, :2])
    c, s = math.cos(angle), math.sin(angle)
    corners = centre + (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * size / 2) @ np.array([[c, s], [-s, c]])
    xy = plane.to_plane(points[candidates])[:, :2]
    over_support = Polygon(corners).contains_points(xy)
    candidates, xy = candidates[over_support], xy[over_support]
    if len(candidates) == 0:
        return []
    cell = cfg.voxel_m
    ij = np.floor((xy - xy.min(0)) / cell).astype(int) + 1
    grid = np.zeros(ij.max(0) + 2, dtype=bool)
    grid[ij[:, 0], ij[:, 1]] = True
    radius = max(1, round(cfg.cluster_eps_m / cell / 2))
    disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    labels, count = ndimage.label(ndimage.binary_dilation(grid, disk))
    point_labels = labels[ij[:, 0], ij[:, 1]]
    clusters = []
    for k in range(1, count + 1):
        members = point_labels == k
        area = len(np.unique(ij[members], axis=0)) * cell**2
        if area >= cfg.min_object_area_m2:
            clusters.append(candidates[members])
    return sorted(clusters, key=len, reverse=True)


def height_field_solid(object_points: np.ndarray, all_points: np.ndarray, plane: SupportPlane, cell: float):
    """A watertight solid of one object: its outline (from `object_points`, holes filled), over which every cell
    rises to the highest reconstructed point of `all_points` in it (at least one cell thick), extruded to the plane."""
    from scipy import ndimage

    local = plane.to_plane(object_points)
    lo = local[:, :2].min(0) - 2 * cell
    shape = np.ceil((local[:, :2].max(0) + 2 * cell - lo) / cell).astype(int) + 1
    ij = np.floor((local[:, :2] - lo) / cell).astype(int)
    outline = np.zeros(shape, dtype=bool)
    outline[ij[:, 0], ij[:, 1]] = True
    outline = ndimage.binary_fill_holes(ndimage.binary_closing(outline, iterations=1))
    every = plane.to_plane(all_points)
    ij_all = np.floor((every[:, :2] - lo) / cell).astype(int)
    inside = np.all((ij_all >= 0) & (ij_all < shape), axis=1)
    heights = np.zeros(shape)
    np.maximum.at(heights, (ij_all[inside, 0], ij_all[inside, 1]), every[inside, 2])
    heights = ndimage.median_filter(heights, size=3)  # single-cell spikes and pits are reconstruction noise
    layers = np.where(outline, np.maximum(1, np.round(heights / cell)), 0).astype(int)
    occupancy = np.arange(layers.max())[None, None, :] < layers[..., None]
    solid = voxel_surface(occupancy, cell)
    solid.apply_translation([lo[0], lo[1], 0.0])
    solid.vertices = plane.to_world(solid.vertices)
    return solid, _oriented_size(local, float(heights[outline].max()))


# The 6 face directions of a voxel and, for each, its 4 corners (unit cube, counter-clockwise seen from outside).
_FACES = (
    ((-1, 0, 0), ((0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0))),
    ((1, 0, 0), ((1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1))),
    ((0, -1, 0), ((0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1))),
    ((0, 1, 0), ((0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0))),
    ((0, 0, -1), ((0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0))),
    ((0, 0, 1), ((0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1))),
)


def voxel_surface(occupancy: np.ndarray, cell: float):
    """The closed surface of a voxel occupancy grid: every voxel face between a filled and an empty cell, two
    triangles each, shared corners merged. Voxel (i, j, k) spans [i, i+1] x [j, j+1] x [k, k+1] cells."""
    import trimesh

    padded = np.pad(occupancy, 1)
    filled = np.argwhere(padded)
    vertices, faces = [], []
    for direction, corners in _FACES:
        neighbour = filled + direction
        exposed = filled[~padded[neighbour[:, 0], neighbour[:, 1], neighbour[:, 2]]] - 1
        base = sum(len(v) for v in vertices)
        quad = np.asarray(corners)
        vertices.append((exposed[:, None, :] + quad[None]).reshape(-1, 3))
        idx = base + 4 * np.arange(len(exposed))[:, None]
        faces.append(np.concatenate([idx + [0, 1, 2], idx + [0, 2, 3]]))
    mesh = trimesh.Trimesh(np.concatenate(vertices) * cell, np.concatenate(faces), process=True)
    return mesh


def oriented_extent(points_2d: np.ndarray, trim: float = 0.01, step_deg: float = 0.5) -> tuple[np.ndarray, float]:
    """Footprint size (long, short) and the long side's orientation (radians, in [0, pi)) of 2D points: the rotation
    whose `trim`-to-(1 - `trim`) quantile box has the least area.

    Not `cv2.minAreaRect`: that fits the convex hull, i.e. the few outermost points, and on a small rounded
    reconstruction (a cube a few capture pixels wide) a millimetre of noise on its rim decides the angle. Quantile
    boxes weigh every point; a square footprint keeps its least area where its faces are, however rounded its
    corners."""
    angles = np.radians(np.arange(0.0, 90.0, step_deg))
    c, s = np.cos(angles), np.sin(angles)
    u = points_2d[:, :1] * c + points_2d[:, 1:2] * s  # [N, angles]: the points along each candidate axis ...
    v = -points_2d[:, :1] * s + points_2d[:, 1:2] * c  # ... and across it
    lo_u, hi_u = np.quantile(u, [trim, 1 - trim], axis=0)
    lo_v, hi_v = np.quantile(v, [trim, 1 - trim], axis=0)
    width, depth = hi_u - lo_u, hi_v - lo_v
    best = int(np.argmin(width * depth))
    size = np.array([width[best], depth[best]])
    angle = float(angles[best])
    if size[1] > size[0]:  # the long side first, the angle along it
        size, angle = size[::-1], angle + math.pi / 2
    return size, angle


def footprint_centre(local: np.ndarray, size: dict, trim: float = 0.01) -> np.ndarray:
    """Centre (plane frame) of the quantile footprint box that `_oriented_size` measured: `local` are the object's
    points in the plane frame, `size` its result."""
    height = size["size_m"][2]
    upper = local[local[:, 2] > height / 2]
    xy = (upper if len(upper) >= 10 else local)[:, :2]
    angle = math.radians(size["yaw_deg"])
    axes = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    uv = xy @ axes.T
    mid = np.quantile(uv, [trim, 1 - trim], axis=0).mean(0)
    return mid @ axes


def _oriented_size(local: np.ndarray, height: float) -> dict:
    """Footprint (least-area quantile rectangle) and height of an object from its points in the plane frame. The
    footprint is taken over the upper half, 1 % trimmed: TSDF fusion flares the foot of vertical walls outwards."""
    upper = local[local[:, 2] > height / 2]
    size, angle = oriented_extent((upper if len(upper) >= 10 else local)[:, :2], trim=0.01)
    return {"size_m": [float(size[0]), float(size[1]), float(height)], "yaw_deg": math.degrees(angle)}
