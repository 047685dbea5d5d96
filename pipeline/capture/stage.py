"""Stage `scene_capture`: posed images of the workcell, in nerfstudio's `transforms.json` convention.

Framework-free. Writes to `out_dir` (robot base frame, metres; camera-to-world matrices in nerfstudio's OpenGL
convention: camera x right, y up, looking down -z):
  transforms.json    pinhole intrinsics (fl_x, fl_y, cx, cy, w, h; no distortion: images are undistorted) and one
                     frame per image (file_path, transform_matrix[, depth_file_path]); `ply_file_path` names the
                     initial point cloud
  images/            frame_00000.png, ...
  depth/             (source sim) ground-truth z-depth, 16-bit PNG in millimetres (nerfstudio's default depth unit),
                     0 where the view sees nothing
  sparse_pc.ply      initial points (x, y, z, red, green, blue[, frame]); `frame` = the image a point came from
  scene_state.json   (source sim) the workcell state captured: joint angles, cube pose — ground truth for later checks
  preview.png        a contact sheet of the views; cameras.png: where the cameras stood
  metrics.json

Sources (params `capture.source`): `sim` renders the sim workcell; `posed` copies a folder that already holds
transforms.json + images; `images` / `video` are posed with COLMAP and aligned with a ChArUco board
(`pipeline.capture.sfm`).

User guide: docs/capture.md.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.artifacts import portable, replace_dir, staging_dir, write_config, write_metrics
from pipeline.common.recipe import Recipe
from pipeline.capture.config import CaptureConfig
from pipeline.common.ply import read_ply, write_ply

TRANSFORMS = "transforms.json"
POINT_CLOUD = "sparse_pc.ply"
DEPTH_UNIT_M = 1e-3  # nerfstudio's default depth_unit_scale_factor: 16-bit PNG in millimetres
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z: OpenGL (nerfstudio) <-> OpenCV (gsplat)


class CaptureError(ValueError):
    """The capture cannot be made or read: too few images, failed registration, missing board, bad transforms.json."""


@dataclass(frozen=True)
class Frame:
    image: Path
    camera_to_world: np.ndarray  # 4x4, OpenGL convention (nerfstudio)
    depth: Path | None = None

    def viewmat(self) -> np.ndarray:
        """World-to-camera, OpenCV convention (x right, y down, looking down +z): what gsplat takes."""
        return np.linalg.inv(self.camera_to_world @ _GL_TO_CV)


@dataclass(frozen=True)
class Capture:
    """A posed capture as read back from `transforms.json`."""

    root: Path
    width: int
    height: int
    K: np.ndarray  # 3x3 pinhole intrinsics
    frames: tuple[Frame, ...]
    point_cloud: Path | None

    @classmethod
    def load(cls, root: str | Path) -> Capture:
        root = Path(root)
        path = root / TRANSFORMS
        if not path.is_file():
            raise CaptureError(f"no {TRANSFORMS} in {root}: materialize `scene_capture` (or point capture.path at a "
                               "posed capture folder)")
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CaptureError(f"{path}: not valid JSON: {exc}") from None
        frames_meta = meta.get("frames") or []
        if not frames_meta:
            raise CaptureError(f"{path}: no frames")
        intrinsics = []
        frames = []
        for i, fm in enumerate(frames_meta):
            merged = {**meta, **fm}  # nerfstudio allows per-frame intrinsics; they override the global ones
            missing = [k for k in ("fl_x", "fl_y", "cx", "cy", "w", "h", "file_path", "transform_matrix")
                       if k not in merged]
            if missing:
                raise CaptureError(f"{path}: frame {i} lacks {', '.join(missing)}")
            distortion = [merged.get(k, 0.0) for k in ("k1", "k2", "k3", "k4", "p1", "p2")]
            if any(abs(d) > 1e-9 for d in distortion):
                raise CaptureError(f"{path}: frame {i} has lens distortion {distortion}; the splat trainer takes "
                                   "undistorted pinhole images (undistort them first, e.g. COLMAP image_undistorter)")
            intrinsics.append(tuple(float(merged[k]) for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")))
            image = root / fm["file_path"]
            if not image.is_file():
                raise CaptureError(f"{path}: frame {i} image {fm['file_path']} does not exist")
            c2w = np.asarray(fm["transform_matrix"], dtype=np.float64)
            if c2w.shape == (3, 4):
                c2w = np.vstack([c2w, [0, 0, 0, 1]])
            if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
                raise CaptureError(f"{path}: frame {i} transform_matrix is not a finite 4x4 matrix")
            depth = root / fm["depth_file_path"] if fm.get("depth_file_path") else None
            frames.append(Frame(image, c2w, depth))
        if len(set(intrinsics)) != 1:
            raise CaptureError(f"{path}: frames have different intrinsics; one camera per capture is supported")
        fx, fy, cx, cy, w, h = intrinsics[0]
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        ply = root / meta["ply_file_path"] if meta.get("ply_file_path") else None
        return cls(root, int(w), int(h), K, tuple(frames), ply if ply and ply.is_file() else None)

    def holdout_indices(self, every: int) -> list[int]:
        """Every `every`-th frame (0, every, 2·every, ...): the views a splat never trains on."""
        return list(range(0, len(self.frames), every)) if every > 0 else []

    def image(self, index: int) -> np.ndarray:
        """HxWx3 uint8 (an alpha channel is dropped)."""
        from PIL import Image

        return np.asarray(Image.open(self.frames[index].image).convert("RGB"))

    def depth(self, index: int) -> np.ndarray | None:
        """HxW float32 metres (0 = no depth), or None without a depth file."""
        from PIL import Image

        if self.frames[index].depth is None:
            return None
        return np.asarray(Image.open(self.frames[index].depth), dtype=np.float32) * DEPTH_UNIT_M

    def points(self) -> dict[str, np.ndarray] | None:
        return read_ply(self.point_cloud) if self.point_cloud else None


def write_transforms(out_dir: Path, width: int, height: int, K: np.ndarray, frames: list[dict], **extra) -> Path:
    """Write transforms.json. `frames`: dicts with file_path, transform_matrix (4x4 OpenGL camera-to-world) and
    optionally depth_file_path, paths relative to `out_dir`. `extra` keys are stored at the top level."""
    meta = {
        "camera_model": "OPENCV",
        "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
        "w": int(width), "h": int(height), "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "frames": [{**f, "transform_matrix": np.asarray(f["transform_matrix"], dtype=float).tolist()} for f in frames],
        "coordinate_frame": "robot_base", "units": "m",
        **extra,
    }
    path = Path(out_dir) / TRANSFORMS
    path.write_text(json.dumps(meta, indent=2))
    return path


def write_point_cloud(path: Path, xyz: np.ndarray, rgb: np.ndarray, frame: np.ndarray | None = None) -> Path:
    """nerfstudio's sparse_pc.ply layout (x, y, z, red, green, blue), plus the source image index when known."""
    props = {"x": xyz[:, 0].astype(np.float32), "y": xyz[:, 1].astype(np.float32), "z": xyz[:, 2].astype(np.float32),
             "red": rgb[:, 0].astype(np.uint8), "green": rgb[:, 1].astype(np.uint8), "blue": rgb[:, 2].astype(np.uint8)}
    if frame is not None:
        props["frame"] = frame.astype(np.int32)
    return write_ply(path, props)


def look_at_camera_to_world(position: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """4x4 OpenGL camera-to-world for a camera at `position` looking at `target` (z up)."""
    back = position - target
    back = back / np.linalg.norm(back)
    right = np.cross(np.asarray(up, dtype=float), back)
    right = right / np.linalg.norm(right)
    cam_up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, back, position
    return c2w


def orbit_viewpoints(cfg: CaptureConfig) -> list[np.ndarray]:
    """`cfg.views` camera-to-world matrices on a seeded orbit round `look_at`, then each close-up orbit's."""
    rng = np.random.default_rng(cfg.seed)
    poses = _orbit(rng, np.asarray(cfg.look_at, dtype=float), cfg.views, cfg.distance_m, cfg.elevation_deg)
    for close in cfg.close_ups:
        poses += _orbit(rng, np.asarray(close.look_at, dtype=float), close.views, close.distance_m,
                        close.elevation_deg)
    return poses


def _orbit(rng: np.random.Generator, target: np.ndarray, n: int, distance_m, elevation_deg) -> list[np.ndarray]:
    """Azimuths spread evenly round `target` (golden-angle order, so every prefix and every k-th subset still
    surrounds it), elevations and distances stratified."""
    golden = math.pi * (3 - math.sqrt(5))
    poses = []
    for i in range(n):
        azimuth = i * golden + rng.uniform(-0.05, 0.05)
        u = (i + rng.uniform()) / n  # stratified in [0, 1)
        elevation = math.radians(elevation_deg.low + (elevation_deg.high - elevation_deg.low)
                                 * ((i * 0.618034) % 1.0))
        distance = distance_m.low + (distance_m.high - distance_m.low) * u
        offset = distance * np.array([math.cos(elevation) * math.cos(azimuth),
                                      math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
        poses.append(look_at_camera_to_world(target + offset, target))
    return poses


def pinhole_K(width: int, height: int, fovy_deg: float) -> np.ndarray:
    """Square pixels, principal point at the image centre (what an OpenGL perspective frustum renders)."""
    fy = height / 2 / math.tan(math.radians(fovy_deg) / 2)
    return np.array([[fy, 0, width / 2], [0, fy, height / 2], [0, 0, 1]])


def render_sim_capture(recipe: Recipe, workcell_xml: Path, out: Path, progress: bool = True,
                       root: Path = Path(".")) -> dict:
    """Render the sim workcell (robot at home, cube at the capture seed's pose) from `capture.views` viewpoints,
    with ground-truth depth and a point cloud back-projected from it (every 4th pixel, 5 mm voxels)."""
    import mujoco
    from PIL import Image
    from tqdm import tqdm

    from pipeline.workcell.cell import Workcell

    cfg = recipe.capture
    workcell = Workcell(workcell_xml, recipe.workcell)
    cube = workcell.reset(cfg.seed)
    model, data = workcell.model, workcell.data
    # The headlight moves with the camera, so the same surface would look different from every view: light the
    # scene with the workcell's fixed lights only (brighter ambient instead), as a real room is lit.
    model.vis.headlight.active = 0
    model.light_ambient[:] = 0.35
    model.vis.global_.fovy = cfg.fovy_deg
    renderer = mujoco.Renderer(model, height=cfg.height, width=cfg.width)
    K = pinhole_K(cfg.width, cfg.height, cfg.fovy_deg)
    (out / "images").mkdir(parents=True)
    (out / "depth").mkdir()
    frames, cloud_xyz, cloud_rgb, cloud_frame = [], [], [], []
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    for i, c2w in enumerate(tqdm(orbit_viewpoints(cfg), desc="capture views", unit="view", disable=not progress)):
        position, back = c2w[:3, 3], c2w[:3, 2]
        target = position - back * 1.0
        horizontal = math.hypot(back[0], back[1])
        cam.lookat[:] = target
        cam.distance = 1.0
        cam.azimuth = math.degrees(math.atan2(-back[1], -back[0]))
        cam.elevation = math.degrees(math.atan2(-back[2], horizontal))
        renderer.update_scene(data, camera=cam)
        # the scene holds a stereo pair (eyes ±ipd/2 apart); a mono render looks from their average
        gl = mujoco.mjv_averageCamera(renderer.scene.camera[0], renderer.scene.camera[1])
        rendered_c2w = np.eye(4)
        forward, up = np.array(gl.forward, dtype=float), np.array(gl.up, dtype=float)
        rendered_c2w[:3, 0], rendered_c2w[:3, 1] = np.cross(forward, up), up
        rendered_c2w[:3, 2], rendered_c2w[:3, 3] = -forward, np.array(gl.pos, dtype=float)
        rgb = renderer.render().copy()
        renderer.enable_depth_rendering()
        depth = renderer.render().copy()
        renderer.disable_depth_rendering()
        depth[depth > 20.0] = 0.0  # nothing there: MuJoCo returns the far plane
        name = f"frame_{i:05d}.png"
        Image.fromarray(rgb).save(out / "images" / name)
        Image.fromarray(np.round(depth / DEPTH_UNIT_M).astype(np.uint16)).save(out / "depth" / name)
        frames.append({"file_path": f"images/{name}", "depth_file_path": f"depth/{name}",
                       "transform_matrix": rendered_c2w})
        xyz, colours = _backproject(depth, rgb, K, rendered_c2w, stride=4)
        cloud_xyz.append(xyz), cloud_rgb.append(colours), cloud_frame.append(np.full(len(xyz), i))
    renderer.close()
    xyz, rgb, frame = _voxel_downsample(np.concatenate(cloud_xyz), np.concatenate(cloud_rgb),
                                        np.concatenate(cloud_frame), voxel=0.005)
    write_point_cloud(out / POINT_CLOUD, xyz, rgb, frame)
    write_transforms(out, cfg.width, cfg.height, K, frames, ply_file_path=POINT_CLOUD, source="sim")
    state = {"seed": cfg.seed, "cube_pose": {"x": cube.x, "y": cube.y, "yaw_rad": cube.yaw},
             "cube_position": workcell.cube_position().tolist(), "cube_quat_wxyz": workcell.cube_quat().tolist(),
             "joint_positions_rad": workcell.joint_positions().tolist(), "workcell_xml": portable(workcell_xml, root)}
    (out / "scene_state.json").write_text(json.dumps(state, indent=2))
    workcell.close()
    return {"points": int(len(xyz))}


def _backproject(depth, rgb, K, c2w, stride: int):
    v, u = np.mgrid[stride // 2:depth.shape[0]:stride, stride // 2:depth.shape[1]:stride]
    z = depth[v, u]
    keep = z > 0
    u, v, z = u[keep] + 0.5, v[keep] + 0.5, z[keep]
    cam_cv = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    c2w_cv = c2w @ _GL_TO_CV
    world = cam_cv @ c2w_cv[:3, :3].T + c2w_cv[:3, 3]
    return world, rgb[v.astype(int), u.astype(int)]


def _voxel_downsample(xyz, rgb, frame, voxel: float):
    keys = np.floor(xyz / voxel).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    first.sort()
    return xyz[first], rgb[first], frame[first]


def copy_posed_capture(source: Path, out: Path) -> dict:
    """A folder that already holds transforms.json + images (nerfstudio's ns-process-data output, or any tool
    writing that convention): validated, then copied with every file it names."""
    capture = Capture.load(source)  # validates before anything is copied
    shutil.copytree(source, out)
    points = capture.points()
    return {"points": 0 if points is None else len(points["x"])}


def build_scene_capture(recipe: Recipe, out_dir: Path, workcell_xml: Path | None = None, root: Path = Path("."),
                        log=print, progress: bool = True) -> dict:
    """Make the capture named by `recipe.capture` in `out_dir` (swapped in only when complete)."""
    cfg = recipe.capture
    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    t0 = time.perf_counter()
    try:
        if cfg.source == "sim":
            if workcell_xml is None or not Path(workcell_xml).is_file():
                raise CaptureError(f"capture.source=sim renders the sim workcell, but {workcell_xml} does not "
                                   "exist: materialize `sim_workcell` first")
            log(f"rendering the sim workcell from {cfg.views + sum(c.views for c in cfg.close_ups)} viewpoints at "
                f"{cfg.width}x{cfg.height}")
            extra = render_sim_capture(recipe, Path(workcell_xml), staging, progress=progress, root=root)
        else:
            if not cfg.path:
                raise CaptureError(f"capture.source={cfg.source} needs capture.path")
            source = (root / cfg.path) if not Path(cfg.path).is_absolute() else Path(cfg.path)
            if not source.exists():
                raise CaptureError(f"capture.path {source} does not exist")
            if cfg.source == "posed":
                extra = copy_posed_capture(source, staging)
            else:
                from pipeline.capture.sfm import pose_with_colmap

                staging.mkdir(parents=True)
                extra = pose_with_colmap(cfg.source, source, cfg, staging, log=log, progress=progress)
        capture = Capture.load(staging)
        if len(capture.frames) < cfg.min_images:
            raise CaptureError(f"the capture has {len(capture.frames)} posed images; at least capture.min_images="
                               f"{cfg.min_images} are needed for a splat that holds up from new viewpoints")
        _contact_sheet(capture, staging / "preview.png")
        _camera_plot(capture, staging / "cameras.png")
        metrics = {"source": cfg.source, "images": len(capture.frames), "width": capture.width,
                   "height": capture.height, "fl_x": float(capture.K[0, 0]), **extra,
                   "seconds": round(time.perf_counter() - t0, 1)}
        write_config(staging, {"capture": cfg.model_dump(mode="json")})
        write_metrics(staging, metrics)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, out_dir)
    return metrics


def _contact_sheet(capture: Capture, path: Path, count: int = 12, columns: int = 4) -> None:
    from PIL import Image

    picks = np.linspace(0, len(capture.frames) - 1, min(count, len(capture.frames))).round().astype(int)
    tiles = [Image.open(capture.frames[i].image).convert("RGB") for i in picks]
    w, h = 256, round(256 * capture.height / capture.width)
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("RGB", (columns * w, rows * h))
    for k, tile in enumerate(tiles):
        sheet.paste(tile.resize((w, h)), ((k % columns) * w, (k // columns) * h))
    sheet.save(path)


def _camera_plot(capture: Capture, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = np.array([f.camera_to_world[:3, 3] for f in capture.frames])
    looks = np.array([-f.camera_to_world[:3, 2] for f in capture.frames])
    fig = plt.figure(figsize=(6, 5))
    ax = fig.add_subplot(projection="3d")
    ax.quiver(*centres.T, *looks.T, length=0.1, color="tab:blue")
    ax.scatter(*centres.T, s=8, color="tab:blue", label="cameras")
    points = capture.points()
    if points is not None:  # the points the cameras surround (a far floor or wall would flatten the plot)
        xyz = np.stack([points["x"], points["y"], points["z"]], -1)
        low, high = centres.min(0) - [0.2, 0.2, 0.5], centres.max(0) + 0.2
        inside = np.nonzero(np.all((xyz >= low) & (xyz <= high), axis=1))[0]
        pick = np.random.default_rng(0).choice(inside, min(3000, len(inside)), replace=False)
        colours = np.stack([points[c][pick] for c in ("red", "green", "blue")], -1) / 255 if "red" in points else "k"
        ax.scatter(points["x"][pick], points["y"][pick], points["z"][pick], s=1, c=colours, label="points")
    ax.scatter([0], [0], [0], marker="^", s=60, color="k", label="robot base")
    ax.set_xlabel("x (m)"), ax.set_ylabel("y (m)"), ax.set_zlabel("z (m)")
    ax.set_title(f"{len(centres)} posed views (robot base frame)")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
