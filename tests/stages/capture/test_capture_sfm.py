"""`pipeline.capture.sfm`: COLMAP posing + ChArUco alignment, on a synthetic capture with known cameras.

A small numpy ray caster renders a ChArUco board lying face up on a textured table (placed per a `BoardConfig` with a
non-trivial origin and yaw) and two textured boxes (so the scene is not one plane), seen from cameras at known poses.
The poses recovered from the images alone must match the ones the images were rendered from, in the robot base frame.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates
from scipy.spatial.transform import Rotation

from pipeline.capture.stage import Capture, CaptureError, look_at_camera_to_world
from pipeline.capture.sfm import _BoardView, _fit_board_from_world, pose_with_colmap
from pipeline.capture.config import BoardConfig, CaptureConfig

WIDTH, HEIGHT, FOCAL = 480, 360, 400.0  # small: SIFT + matching + mapping dominate the test time
K_TRUE = np.array([[FOCAL, 0, WIDTH / 2], [0, FOCAL, HEIGHT / 2], [0, 0, 1]])  # pixel centres at +0.5 (COLMAP)
BOARD = BoardConfig(squares_x=7, squares_y=5, square_size_m=0.05, marker_size_m=0.038, dictionary="DICT_5X5_100",
                    origin_in_base=(0.25, -0.05, 0.0), yaw_deg=30.0, min_views=3)
VIEWS = 20
PAPER_MARGIN_M = 0.02  # white paper round the printed board, as a real print has
TEXEL_M = 0.0015


class Scene:
    """Table (z = 0, noise texture), the board printed face up on it, two noise-textured boxes."""

    def __init__(self, board_cfg: BoardConfig, show_board: bool = True, seed: int = 0):
        rng = np.random.default_rng(seed)
        noise = rng.normal(size=(1024, 1024, 3))
        texture = sum(w * gaussian_filter(noise, (s, s, 0), mode="wrap") for w, s in ((1, 1.5), (3, 4), (8, 10)))
        lo, hi = np.percentile(texture, [1, 99], axis=(0, 1))
        self.texture = np.clip((texture - lo) / (hi - lo), 0, 1)
        self.show_board = show_board
        yaw = math.radians(board_cfg.yaw_deg)
        # A printed page lying face up, seen from above: its columns run along the board's yaw direction, its rows
        # (top to bottom) along the direction 90° clockwise from that, its top-left corner at the board origin.
        self.board_cols = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        self.board_rows = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        self.origin = np.asarray(board_cfg.origin_in_base, dtype=float)
        self.px_per_m = 2500.0
        board = cv2.aruco.CharucoBoard((board_cfg.squares_x, board_cfg.squares_y), board_cfg.square_size_m,
                                       board_cfg.marker_size_m,
                                       cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, board_cfg.dictionary)))
        self.size_m = np.array([board_cfg.squares_x, board_cfg.squares_y]) * board_cfg.square_size_m
        w, h = np.round(self.size_m * self.px_per_m).astype(int)
        self.board_image = board.generateImage((w, h), marginSize=0).astype(float) / 255
        centre = self.origin + self.board_cols * self.size_m[0] / 2 + self.board_rows * self.size_m[1] / 2
        self.centre = centre
        self.boxes = [(centre + [-0.30, 0.12, 0.0], centre + [-0.20, 0.22, 0.10]),
                      (centre + [0.22, 0.18, 0.0], centre + [0.28, 0.24, 0.20])]

    def _noise(self, u: np.ndarray, v: np.ndarray, offset: float) -> np.ndarray:
        coords = [u / TEXEL_M + offset, v / TEXEL_M + 2 * offset]
        return np.stack([map_coordinates(self.texture[..., c], coords, order=1, mode="grid-wrap") for c in range(3)],
                        -1)

    def render(self, c2w_gl: np.ndarray, supersample: int = 2) -> np.ndarray:
        c2w_cv = c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0])
        offsets = (np.arange(supersample) + 0.5) / supersample
        u = (np.arange(WIDTH)[None, :, None, None] + offsets[None, None, None, :]).repeat(HEIGHT, 0)
        v = (np.arange(HEIGHT)[:, None, None, None] + offsets[None, None, :, None])
        u, v = np.broadcast_arrays(u, v)
        dirs = np.stack([(u - K_TRUE[0, 2]) / FOCAL, (v - K_TRUE[1, 2]) / FOCAL, np.ones_like(u)], -1).reshape(-1, 3)
        dirs = (dirs @ c2w_cv[:3, :3].T).astype(np.float32)  # float32 halves the time; ample for 1 mm geometry
        origin = c2w_cv[:3, 3].astype(np.float32)
        depth = np.full(len(dirs), np.inf, dtype=np.float32)
        colour = np.full((len(dirs), 3), 0.5, dtype=np.float32)
        # table top
        t = np.where(dirs[:, 2] < 0, -origin[2] / np.minimum(dirs[:, 2], -1e-12), np.inf)
        hit = np.isfinite(t)
        p = origin + dirs[hit] * t[hit, None]
        colour[hit] = self._table(p)
        depth[hit] = t[hit]
        with np.errstate(divide="ignore"):
            inverse = 1 / dirs
        for k, (lo, hi) in enumerate(self.boxes):
            with np.errstate(invalid="ignore"):
                t1, t2 = (lo - origin).astype(np.float32) * inverse, (hi - origin).astype(np.float32) * inverse
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            t_in, t_out = near.max(1), far.min(1)
            hit = (t_in <= t_out) & (t_in > 0) & (t_in < depth)
            axis = near[hit].argmax(1)
            p = origin + dirs[hit] * t_in[hit, None]
            a, b = np.take_along_axis(p, ((axis[:, None] + [1, 2]) % 3), 1).T
            shade = np.array([0.7, 0.85, 1.0])[axis]
            colour[hit] = self._noise(a, b, 300.0 * (k + 1) + 100 * axis) * shade[:, None]
            depth[hit] = t_in[hit]
        image = colour.reshape(HEIGHT, WIDTH, supersample * supersample, 3).mean(2)  # rays ordered row, column, sub
        return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)

    def _table(self, p: np.ndarray) -> np.ndarray:
        colour = self._noise(p[:, 0], p[:, 1], 0.0)
        if not self.show_board:
            return colour
        along, down = (p - self.origin) @ self.board_cols, (p - self.origin) @ self.board_rows
        paper = ((along > -PAPER_MARGIN_M) & (along < self.size_m[0] + PAPER_MARGIN_M)
                 & (down > -PAPER_MARGIN_M) & (down < self.size_m[1] + PAPER_MARGIN_M))
        colour[paper] = 1.0
        inside = (along >= 0) & (along < self.size_m[0]) & (down >= 0) & (down < self.size_m[1])
        printed = map_coordinates(self.board_image, [down[inside] * self.px_per_m - 0.5,
                                                     along[inside] * self.px_per_m - 0.5], order=1, mode="nearest")
        colour[inside] = printed[:, None]
        return colour


def _cameras(scene: Scene, count: int, seed: int = 1) -> list[np.ndarray]:
    """OpenGL camera-to-world matrices round the board: 0.4-0.7 m above the table, every azimuth."""
    rng = np.random.default_rng(seed)
    poses = []
    for i in range(count):
        azimuth = 2 * math.pi * i / count + rng.uniform(-0.1, 0.1)
        radius, height = rng.uniform(0.22, 0.4), rng.uniform(0.4, 0.7)
        position = scene.centre + [radius * math.cos(azimuth), radius * math.sin(azimuth), height]
        poses.append(look_at_camera_to_world(position, scene.centre + rng.uniform(-0.03, 0.03, 3) * [1, 1, 0]))
    return poses


def _render_folder(scene: Scene, poses: list[np.ndarray], folder: Path) -> Path:
    folder.mkdir(parents=True)

    def render(i: int) -> None:
        Image.fromarray(scene.render(poses[i])).save(folder / f"view_{i:03d}.png")

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # numpy releases the GIL: ~2x on 2 cores
        list(pool.map(render, range(len(poses))))
    return folder


def _config(path: Path, source: str = "images", **overrides) -> CaptureConfig:
    return CaptureConfig(source=source, path=str(path), board=BOARD, **{"min_images": 10, **overrides})


def _rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(a[:3, :3].T @ b[:3, :3]) - 1) / 2, -1, 1)))


@pytest.fixture(scope="module")
def scene_views(tmp_path_factory):
    """VIEWS rendered views (view_000.png ...) plus one unrelated image COLMAP cannot register."""
    scene = Scene(BOARD)
    poses = _cameras(scene, VIEWS)
    folder = _render_folder(scene, poses, tmp_path_factory.mktemp("scene") / "views")
    stranger = Scene(BOARD, show_board=False, seed=7).texture[:HEIGHT, :WIDTH]
    Image.fromarray(np.round(stranger * 255).astype(np.uint8)).save(folder / "zz_unrelated.png")
    return poses, folder


@pytest.fixture(scope="module")
def posed_images(scene_views, tmp_path_factory):
    poses, folder = scene_views
    out = tmp_path_factory.mktemp("posed") / "capture"
    out.mkdir()
    metrics = pose_with_colmap("images", folder, _config(folder), out, log=print, progress=False)
    return out, metrics


def _assert_matches_ground_truth(out: Path, truth: dict[str, np.ndarray], centre_rms_m: float, rot_deg: float):
    capture = Capture.load(out)
    meta = json.loads((out / "transforms.json").read_text())
    centre_errors, rotation_errors = [], []
    for frame, frame_meta in zip(capture.frames, meta["frames"]):
        expected = truth[frame_meta["source_image"]]
        centre_errors.append(np.linalg.norm(frame.camera_to_world[:3, 3] - expected[:3, 3]))
        rotation_errors.append(_rotation_error_deg(frame.camera_to_world, expected))
    centre_rms = float(np.sqrt(np.mean(np.square(centre_errors))))
    print(f"centre RMS {centre_rms * 1000:.2f} mm, max rotation error {max(rotation_errors):.3f} deg")
    assert centre_rms < centre_rms_m
    assert max(rotation_errors) < rot_deg
    assert all(frame.camera_to_world[2, 3] > 0.3 for frame in capture.frames), "cameras must be above the table"
    assert capture.K[0, 0] == pytest.approx(FOCAL, rel=0.01)
    assert (capture.width, capture.height) == (WIDTH, HEIGHT)
    return capture


@pytest.mark.slow  # one SfM run on 21 images: ~30 s on 2 cores
def test_images_are_posed_in_the_robot_base_frame(posed_images, scene_views):
    out, metrics = posed_images
    poses, folder = scene_views
    print(metrics)
    assert metrics["images_in"] == VIEWS + 1
    assert metrics["images_registered"] >= VIEWS - 1
    assert metrics["images_dropped"] == metrics["images_in"] - metrics["images_registered"] >= 1
    meta = json.loads((out / "transforms.json").read_text())
    assert "zz_unrelated.png" not in {f["source_image"] for f in meta["frames"]}
    assert metrics["board_views"] >= VIEWS - 2
    assert metrics["alignment_rms_m"] < 0.005
    assert metrics["board_reprojection_rms_px"] < 0.3  # board corners agree with COLMAP's cameras: no pixel bias
    truth = {f"view_{i:03d}.png": pose for i, pose in enumerate(poses)}
    capture = _assert_matches_ground_truth(out, truth, centre_rms_m=0.002, rot_deg=0.25)  # measured 0.2 mm, 0.02°
    assert len(capture.frames) == metrics["images_registered"]
    assert [f.image.name for f in capture.frames] == [f"frame_{k:05d}.png" for k in range(len(capture.frames))]
    points = capture.points()
    assert points is not None and len(points["x"]) == metrics["points"] > 500
    # the sparse points lie on the table or the boxes, in metres round the board, not in COLMAP's arbitrary units
    z = points["z"]
    assert np.median(np.abs(z)) < 0.02 and np.percentile(z, 1) > -0.02 and z.max() < 0.25


def test_video_is_posed_from_every_nth_frame(scene_views, tmp_path):
    poses, folder = scene_views
    video = tmp_path / "walkround.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (WIDTH, HEIGHT))
    for i in range(VIEWS):
        writer.write(cv2.imread(str(folder / f"view_{i:03d}.png")))
    writer.release()
    out = tmp_path / "capture"
    out.mkdir()
    metrics = pose_with_colmap("video", video, _config(video, "video", video_every_nth_frame=2), out, log=print,
                               progress=False)
    print(metrics)
    assert metrics["images_in"] == VIEWS // 2
    assert metrics["images_registered"] >= VIEWS // 2 - 1
    truth = {f"frame {i}": pose for i, pose in enumerate(poses) if i % 2 == 0}
    _assert_matches_ground_truth(out, truth, centre_rms_m=0.003, rot_deg=0.5)  # measured 0.4 mm, 0.04°


def test_too_few_images_fail_before_colmap_with_the_counts(scene_views, tmp_path):
    _, folder = scene_views
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(p.name for p in folder.iterdir())[:4]:
        shutil.copy(folder / name, few / name)
    (few / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CaptureError, match=r"4 input images.*min_images=10"):
        pose_with_colmap("images", few, _config(few), out, log=print, progress=False)


def test_max_images_thins_the_input_evenly(scene_views, tmp_path):
    _, folder = scene_views
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CaptureError, match=r"5 input images.*min_images=10"):  # stops before COLMAP: cheap
        pose_with_colmap("images", folder, _config(folder, max_images=5), out, log=print, progress=False)


def test_board_fit_rejects_a_misdetected_view_and_recovers_the_similarity():
    """Board views made from known geometry (no rendering): COLMAP world = board frame scaled by 1/0.08, rotated,
    shifted; one view's board pose is wrong by 20 cm and 30 px."""
    rng = np.random.default_rng(3)
    board = cv2.aruco.CharucoBoard((7, 5), 0.05, 0.038, cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_5X5_100))
    corners = board.getChessboardCorners().astype(float)
    world_from_board = np.eye(4)
    world_from_board[:3, :3] = 12.5 * Rotation.from_rotvec([0.3, -1.2, 2.0]).as_matrix()
    world_from_board[:3, 3] = [1.0, -2.0, 0.5]
    views = []
    for i in range(8):
        azimuth = 2 * math.pi * i / 8
        # in the board frame the table's up is -z (z points into the printed page)
        position = np.array([0.175 + 0.3 * math.cos(azimuth), 0.125 + 0.3 * math.sin(azimuth), -0.5])
        board_from_cam = look_at_camera_to_world(position, np.array([0.175, 0.125, 0.0]), up=(0, 0, -1))
        cam_from_board = np.linalg.inv(board_from_cam @ np.diag([1.0, -1.0, -1.0, 1.0]))
        cam = corners @ cam_from_board[:3, :3].T + cam_from_board[:3, 3]
        pixels = cam[:, :2] / cam[:, 2:] * FOCAL + K_TRUE[:2, 2] + rng.normal(0, 0.1, (len(cam), 2))
        centre = position + rng.normal(0, 0.002, 3)
        if i == 5:
            pixels, centre = pixels + 30.0, centre + [0.2, 0.0, 0.0]
        cam_from_world = (cam_from_board @ np.linalg.inv(world_from_board))[:3]
        views.append(_BoardView(i, cam_from_world, corners, pixels, centre))
    board_from_world, fit = _fit_board_from_world(views, K_TRUE, min_views=3)
    assert fit["board_inlier_views"] == 7
    assert fit["board_reprojection_rms_px"] < 0.2
    assert np.allclose(board_from_world, np.linalg.inv(world_from_board), atol=1e-3)


def test_importing_pycolmap_first_does_not_break_png_writing(tmp_path):
    """pycolmap 4.2 exports a static zlib: a process that loads it before libz.so.1 aborts on Pillow's next PNG write.
    Importing this module (what the pipeline does, before Pillow is loaded) must leave the process safe."""
    script = ("import pipeline.capture.sfm, pycolmap\nfrom PIL import Image\nimport numpy as np\n"
              f"for i in range(10): Image.fromarray(np.random.default_rng(i).integers(0, 255, (240, 320, 3), "
              f"dtype=np.uint8)).save({str(tmp_path / 'x.png')!r})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_capture_without_the_board_is_refused(tmp_path):
    scene = Scene(BOARD, show_board=False)
    folder = _render_folder(scene, _cameras(scene, 8, seed=2), tmp_path / "views")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CaptureError, match=r"board not found: 0 of [78] registered images"):
        pose_with_colmap("images", folder, _config(folder, min_images=6), out, log=print, progress=False)


@pytest.mark.parametrize("content", [None, b"this is not a video"])
def test_an_unreadable_video_is_refused(tmp_path, content):
    video = tmp_path / "clip.avi"
    if content is not None:
        video.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CaptureError, match="video"):
        pose_with_colmap("video", video, _config(video, "video"), out, log=print, progress=False)
