"""Photos ray-traced from exact primitives, as a camera would take them (sharp outlines, edge pixels blended by
supersampling, faces shaded): a table plane, upright boxes and cylinders. Independent of the pipeline's own
projection code, so tests of geometry fitted to photos are not checked against themselves."""

import math

import numpy as np

TABLE_RGB = np.array([196.0, 160.0, 120.0])


def ray_box(origins, dirs, centre, size, yaw, base_z=0.0):
    """Nearest hit distance and normal of rays on an upright box of `size` standing on z = `base_z` (inf: no hit)."""
    c, s = math.cos(yaw), math.sin(yaw)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    o = (origins - [centre[0], centre[1], base_z + size[2] / 2]) @ R
    d = dirs @ R
    half = np.asarray(size) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    near, far = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
    hit = (near <= far) & (near > 0)
    axis = np.minimum(t1, t2).argmax(1)
    normal = np.zeros_like(o)
    normal[np.arange(len(o)), axis] = -np.sign(d[np.arange(len(o)), axis])
    return np.where(hit, near, np.inf), normal @ R.T


def ray_cylinder(origins, dirs, centre, radius, height):
    o = origins - [centre[0], centre[1], 0.0]
    a = dirs[:, 0] ** 2 + dirs[:, 1] ** 2
    b = 2 * (o[:, 0] * dirs[:, 0] + o[:, 1] * dirs[:, 1])
    cc = o[:, 0] ** 2 + o[:, 1] ** 2 - radius**2
    disc = b**2 - 4 * a * cc
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(disc)) / (2 * a)
        z = o[:, 2] + t_side * dirs[:, 2]
        side = (disc >= 0) & (t_side > 0) & (z >= 0) & (z <= height)
        t_top = (height - o[:, 2]) / dirs[:, 2]
        p = o + t_top[:, None] * dirs
        top = (t_top > 0) & (p[:, 0] ** 2 + p[:, 1] ** 2 <= radius**2)
    t = np.where(side, t_side, np.inf)
    t = np.where(top & (t_top < t), t_top, t)
    normal = np.where((t == t_top)[:, None], [[0.0, 0.0, 1.0]], np.c_[o[:, :2] + t_side[:, None] * dirs[:, :2],
                                                                     np.zeros(len(o))] / radius)
    return t, normal


def photo(c2w, K, width, height, shapes, ss=3, table_z=0.0):
    """Ray-traced RGB (uint8) of the table plane z = `table_z` and `shapes` ((ray -> (t, normal)) callables, each
    with its colour); `c2w` OpenGL camera-to-world, `K` pinhole with pixel centres at +0.5; `ss`² rays a pixel."""
    v, u = np.mgrid[0:height * ss, 0:width * ss]
    x = ((u + 0.5) / ss - K[0, 2]) / K[0, 0]
    y = ((v + 0.5) / ss - K[1, 2]) / K[1, 1]
    cam = np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3)  # OpenCV camera
    cv_to_world = c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])
    dirs = cam @ cv_to_world.T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
    t_table = np.where(dirs[:, 2] < 0, (table_z - origins[:, 2]) / dirs[:, 2], np.inf)
    colour = np.where(np.isfinite(t_table)[:, None], TABLE_RGB, 0.0)
    best = t_table.copy()
    light = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    for hit, rgb in shapes:
        t, normal = hit(origins, dirs)
        nearer = t < best
        shade = 0.55 + 0.45 * np.clip(normal @ light, 0, 1)
        colour[nearer] = np.asarray(rgb) * shade[nearer, None]
        best = np.minimum(best, t)
    return colour.reshape(height, ss, width, ss, 3).mean((1, 3)).round().clip(0, 255).astype(np.uint8)
