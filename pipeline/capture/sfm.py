"""Pose an `images` / `video` capture with COLMAP (pycolmap) and place it in the robot base frame with a ChArUco board.

COLMAP recovers cameras up to an unknown similarity (scale, rotation, translation). The ChArUco board lying face up on
the table at a known place (`capture.board`) fixes all seven: every registered view that sees the board gives its
camera centre in board metres (solvePnP), a robust Umeyama fit of those centres to COLMAP's gives a first similarity,
and a least-squares fit of the board's corner reprojections through COLMAP's (more precise) poses refines it.

One shared SIMPLE_PINHOLE camera (square pixels, principal point at the image centre, no lens distortion), so the
images are written out as they came, as the pinhole images the splat trainer takes: right for phone cameras, whose
processing already removes distortion; frames from a wide-angle lens with strong distortion need undistorting first.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import zlib  # noqa: F401  before pycolmap: see below
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.capture.stage import POINT_CLOUD, CaptureError, write_point_cloud, write_transforms
from pipeline.capture.config import BoardConfig, CaptureConfig

# pycolmap 4.2's _core exports its own static zlib(-ng). If the system libz.so.1 is first loaded after it, libz binds
# its internal calls to pycolmap's copies and every later PNG write through Pillow corrupts the heap ("double free or
# corruption", SIGABRT). Importing the stdlib zlib module above loads libz.so.1 first, with its own bindings.

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CAMERA_MODEL = "SIMPLE_PINHOLE"
MIN_BOARD_CORNERS = 6  # fewer ChArUco corners than this give no trustworthy board pose
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z: OpenCV/COLMAP -> OpenGL (nerfstudio)


def pose_with_colmap(source: str, path: Path, cfg: CaptureConfig, out_dir: Path, log: Callable[[str], None] = print,
                     progress: bool = True) -> dict:
    """Fill `out_dir` (existing, empty) with images/, transforms.json and sparse_pc.ply for the `source` ("images": a
    folder, "video": a file) at `path`, posed in the robot base frame in metres. Returns JSON-ready metrics."""
    import pycolmap

    if source not in ("images", "video"):
        raise CaptureError(f"pose_with_colmap poses capture.source=images or video, not {source!r}")
    out_dir, board = Path(out_dir), _charuco_board(cfg.board)  # a bad board setting fails before COLMAP runs
    with tempfile.TemporaryDirectory(prefix="twinloop-sfm-") as tmp:
        work = Path(tmp)
        frames_dir = work / "frames"
        frames_dir.mkdir()
        if source == "video":
            names = _read_video(Path(path), cfg, frames_dir, log)
        else:
            names = _read_images(Path(path), cfg, frames_dir, progress)
        if len(names) < cfg.min_images:
            raise CaptureError(f"{path}: {len(names)} input images, but capture.min_images={cfg.min_images} are "
                               "needed: capture more views (or lower capture.video_every_nth_frame for a video)")
        log(f"structure from motion on {len(names)} images from {path}")
        rec = _reconstruct(work, frames_dir, len(names), cfg.min_images, sequential=source == "video", log=log,
                           progress=progress)
        camera = next(iter(rec.cameras.values()))
        K = np.asarray(camera.calibration_matrix(), dtype=float)
        images = sorted((rec.image(i) for i in rec.reg_image_ids()), key=lambda im: im.name)
        views = _board_views(images, frames_dir, K, board, cfg.board, progress)
        if len(views) < cfg.board.min_views:
            raise CaptureError(f"board not found: {len(views)} of {len(images)} registered images show the ChArUco "
                               f"board ({cfg.board.squares_x}x{cfg.board.squares_y} {cfg.board.dictionary}, >= "
                               f"{MIN_BOARD_CORNERS} corners), capture.board.min_views={cfg.board.min_views} needed: "
                               "check the board settings and keep the board in view")
        board_from_world, fit = _fit_board_from_world(views, K, cfg.board.min_views)
        base_from_world = _base_from_board(cfg.board) @ board_from_world
        scale = float(np.cbrt(np.linalg.det(base_from_world[:3, :3])))
        rotation = base_from_world[:3, :3] / scale

        (out_dir / "images").mkdir()
        frames = []
        for k, image in enumerate(images):
            world_from_cam = np.linalg.inv(np.vstack([image.cam_from_world().matrix(), [0, 0, 0, 1]]))
            c2w = np.eye(4)
            c2w[:3, :3] = rotation @ world_from_cam[:3, :3]
            c2w[:3, 3] = base_from_world[:3, :3] @ world_from_cam[:3, 3] + base_from_world[:3, 3]
            name = f"images/frame_{k:05d}.png"
            shutil.copyfile(frames_dir / image.name, out_dir / name)
            frames.append({"file_path": name, "transform_matrix": c2w @ _CV_TO_GL, "source_image": names[image.name]})
        points = list(rec.points3D.values())
        xyz = np.array([p.xyz for p in points], dtype=float).reshape(-1, 3)
        rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
        write_point_cloud(out_dir / POINT_CLOUD, xyz @ base_from_world[:3, :3].T + base_from_world[:3, 3], rgb)
        write_transforms(out_dir, camera.width, camera.height, K, frames, ply_file_path=POINT_CLOUD, source=source,
                         camera_model_fitted=CAMERA_MODEL)
        heights = np.array([f["transform_matrix"][2, 3] for f in frames])
        if np.median(heights) <= 0:
            log("warning: most cameras lie below the table: is the board face up, as capture.board describes?")
        dropped = [names[n] for n in sorted(set(names) - {im.name for im in images})]
        if dropped:
            log(f"COLMAP could not register {len(dropped)} image(s), left out: {', '.join(dropped)}")
        metrics = {"images_in": len(names), "images_registered": len(images), "images_dropped": len(dropped),
                   "board_views": len(views), **fit, "scale_m_per_unit": scale, "focal_px": float(K[0, 0]),
                   "reprojection_error_px": float(rec.compute_mean_reprojection_error()), "points": len(points),
                   "colmap_version": pycolmap.__version__}
        log(f"posed {len(images)}/{len(names)} images; board in {len(views)} views; centre RMS "
            f"{fit['alignment_rms_m'] * 1000:.1f} mm; {len(points)} points")
        return metrics


def _read_images(folder: Path, cfg: CaptureConfig, frames_dir: Path, progress: bool) -> dict[str, str]:
    """Every .jpg/.jpeg/.png in `folder` (sorted; evenly thinned to `max_images`), re-saved upright as PNG: COLMAP
    then sees exactly the pixels that are written out, whatever EXIF orientation a phone put on them. Returns frame
    name -> source file name."""
    from PIL import Image, ImageOps
    from tqdm import tqdm

    if not folder.is_dir():
        raise CaptureError(f"capture.source=images needs a folder of images; {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) > cfg.max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, cfg.max_images).round().astype(int)]
    names, sizes = {}, set()
    for i, file in enumerate(tqdm(files, desc="reading images", unit="img", disable=not progress)):
        with Image.open(file) as img:
            upright = ImageOps.exif_transpose(img).convert("RGB")
        sizes.add(upright.size)
        if len(sizes) > 1:
            raise CaptureError(f"{folder}: images differ in size ({sorted(sizes)}): one camera at one resolution "
                               "per capture is supported")
        names[f"{i:06d}.png"] = file.name
        upright.save(frames_dir / f"{i:06d}.png")
    return names


def _read_video(video: Path, cfg: CaptureConfig, frames_dir: Path, log: Callable[[str], None]) -> dict[str, str]:
    """Every `video_every_nth_frame`-th frame as PNG, evenly thinned to `max_images` (frames go to disk, not memory:
    a long video at full resolution does not fit). Returns frame name -> "frame <index in the video>"."""
    import cv2

    reader = cv2.VideoCapture(str(video))
    if not video.is_file() or not reader.isOpened():
        raise CaptureError(f"cannot open video {video}: capture.source=video needs a video file OpenCV can read")
    kept, index = {}, 0
    try:
        while True:
            ok, frame = reader.read()
            if not ok:
                break
            if index % cfg.video_every_nth_frame == 0:
                name = f"{len(kept):06d}.png"
                kept[name] = f"frame {index}"
                cv2.imwrite(str(frames_dir / name), frame)
            index += 1
    finally:
        reader.release()
    if not kept:
        raise CaptureError(f"video {video} yielded no frames (unreadable codec or empty file)")
    log(f"{video.name}: {index} frames; keeping 1 in {cfg.video_every_nth_frame}: {len(kept)} frames")
    if len(kept) > cfg.max_images:
        order = sorted(kept)
        keep = {order[i] for i in np.linspace(0, len(order) - 1, cfg.max_images).round().astype(int)}
        for name in set(kept) - keep:
            (frames_dir / name).unlink()
            del kept[name]
    return kept


def _reconstruct(work: Path, frames_dir: Path, count: int, min_images: int, sequential: bool,
                 log: Callable[[str], None], progress: bool):
    """SIFT features, matching (sequential for video frames, exhaustive otherwise) and incremental mapping on CPU,
    with one shared camera; returns the reconstruction with the most registered images."""
    import pycolmap

    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = int(pycolmap.logging.Level.WARNING)  # per-image INFO lines would bury the log
    try:
        return _run_colmap(work, frames_dir, count, min_images, sequential, log, progress)
    finally:
        pycolmap.logging.minloglevel = level


def _run_colmap(work: Path, frames_dir: Path, count: int, min_images: int, sequential: bool,
                log: Callable[[str], None], progress: bool):
    import pycolmap
    from tqdm import tqdm

    database, cpu = work / "database.db", pycolmap.Device.cpu
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = CAMERA_MODEL
    t0 = time.perf_counter()
    pycolmap.extract_features(database, frames_dir, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              device=cpu)
    log(f"SIFT features extracted in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    if sequential:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = 15
        pycolmap.match_sequential(database, pairing_options=pairing, device=cpu)
    else:
        pycolmap.match_exhaustive(database, device=cpu)
    log(f"{'sequential' if sequential else 'exhaustive'} matching done in {time.perf_counter() - t0:.1f} s")
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = 0  # the same images give the same poses run after run
    t0 = time.perf_counter()
    with tqdm(total=count, desc="registering images", unit="img", disable=not progress) as bar:
        models = pycolmap.incremental_mapping(database, frames_dir, work / "sparse", options=options,
                                              initial_image_pair_callback=lambda: bar.update(2),
                                              next_image_callback=lambda: bar.update(1))
    if not models:
        raise CaptureError(f"COLMAP registered none of the {count} images: the views share too few features "
                           "(more overlap between views, more texture in the scene, sharper images)")
    best = max(models.values(), key=lambda m: m.num_reg_images())
    log(f"mapping done in {time.perf_counter() - t0:.1f} s: {len(models)} model(s), the largest has "
        f"{best.num_reg_images()} of {count} images")
    if best.num_reg_images() < min_images:
        raise CaptureError(f"COLMAP registered only {best.num_reg_images()} of {count} images (largest model), "
                           f"capture.min_images={min_images} needed: views need more overlap and texture")
    return best


@dataclass(frozen=True)
class _BoardView:
    image_id: int
    cam_from_world: np.ndarray  # 3x4, COLMAP's world
    object_points: np.ndarray  # Nx3 board frame, metres
    image_points: np.ndarray  # Nx2 pixels, COLMAP convention (pixel centres at +0.5)
    centre_in_board: np.ndarray  # camera centre from solvePnP, board frame


def _charuco_board(board_cfg: BoardConfig):
    """OpenCV's CharucoBoard for `capture.board`, its settings checked before minutes go into COLMAP."""
    import cv2

    name = board_cfg.dictionary
    if not name.startswith("DICT_") or not hasattr(cv2.aruco, name):
        raise CaptureError(f"capture.board.dictionary={name!r} is not a cv2.aruco predefined dictionary (e.g. "
                           "DICT_5X5_100)")
    if board_cfg.marker_size_m >= board_cfg.square_size_m:
        raise CaptureError(f"capture.board.marker_size_m={board_cfg.marker_size_m} must be smaller than "
                           f"square_size_m={board_cfg.square_size_m}: measure both on the printed board")
    return cv2.aruco.CharucoBoard((board_cfg.squares_x, board_cfg.squares_y), board_cfg.square_size_m,
                                  board_cfg.marker_size_m, cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name)))


def _board_views(images: list, frames_dir: Path, K: np.ndarray, board, board_cfg: BoardConfig,
                 progress: bool) -> list[_BoardView]:
    """The registered images that show the board, with its corners and the camera centre solvePnP gives."""
    import cv2
    from tqdm import tqdm

    detector, corners3d = cv2.aruco.CharucoDetector(board), board.getChessboardCorners()
    views = []
    for image in tqdm(images, desc="finding the board", unit="img", disable=not progress):
        gray = cv2.imread(str(frames_dir / image.name), cv2.IMREAD_GRAYSCALE)
        corners, ids, marker_corners, _ = detector.detectBoard(gray)
        if ids is None or len(ids) < MIN_BOARD_CORNERS:
            continue
        corners = _refine_corners(gray, corners.reshape(-1, 2), np.concatenate(marker_corners).reshape(-1, 2))
        obj = corners3d[ids.ravel()].astype(np.float64)
        if np.linalg.svd(obj[:, :2] - obj[:, :2].mean(0), compute_uv=False)[1] < board_cfg.square_size_m / 2:
            continue  # corners (nearly) on one line: the board's tilt about that line is unobservable
        pixels = corners.astype(np.float64) + 0.5  # OpenCV's pixel centres are integers, COLMAP's at +0.5
        ok, rvec, tvec = cv2.solvePnP(obj, pixels, K, None, flags=cv2.SOLVEPNP_IPPE)
        if not ok:
            continue
        R = cv2.Rodrigues(rvec)[0]
        views.append(_BoardView(image.image_id, image.cam_from_world().matrix(), obj, pixels, -R.T @ tvec.ravel()))
    return views


def _refine_corners(gray: np.ndarray, corners: np.ndarray, marker_corners: np.ndarray) -> np.ndarray:
    """Saddle-point refinement of the ChArUco corners. OpenCV <= 4.13's CharucoDetector returns them shifted by
    +0.5 px (opencv/opencv#25539); cornerSubPix converges to the true saddle whatever the start, so refining again is
    right before and after that fix. Each window stays clear of the nearest marker corner, as OpenCV's own does."""
    import cv2

    nearest = np.linalg.norm(corners[:, None] - marker_corners[None], axis=2).min(1)
    refined = corners.astype(np.float32).copy()
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-3)
    for half in np.unique(np.clip((nearest / 2).astype(int), 2, 15)):
        pick = np.clip((nearest / 2).astype(int), 2, 15) == half
        refined[pick] = cv2.cornerSubPix(gray, refined[pick].reshape(-1, 1, 2), (int(half), int(half)), (-1, -1),
                                         criteria).reshape(-1, 2)
    return refined


def _fit_board_from_world(views: list[_BoardView], K: np.ndarray, min_views: int) -> tuple[np.ndarray, dict]:
    """4x4 similarity board <- COLMAP world. RANSAC over camera-centre triples rejects views whose board pose is off
    (a misdetection, a flipped planar pose); the inliers' corner reprojections through COLMAP's poses then refine it,
    since one view's solvePnP depth is far less certain than the relative poses bundle adjustment found."""
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    world = np.array([-v.cam_from_world[:, :3].T @ v.cam_from_world[:, 3] for v in views])
    board = np.array([v.centre_in_board for v in views])
    threshold = max(0.01, 0.05 * float(np.median(np.linalg.norm(board, axis=1))))  # metres, board frame
    rng = np.random.default_rng(0)
    best = np.zeros(len(views), dtype=bool)
    for _ in range(300 if len(views) > 3 else 1):
        sample = rng.choice(len(views), 3, replace=False)
        s, R, t = _umeyama(world[sample], board[sample])
        inliers = np.linalg.norm(s * world @ R.T + t - board, axis=1) < threshold
        if inliers.sum() > best.sum():
            best = inliers
    if best.sum() < max(3, min_views):
        raise CaptureError(f"board poses disagree with COLMAP's cameras: only {int(best.sum())} of {len(views)} views "
                           f"agree within {threshold * 100:.1f} cm: check capture.board.square_size_m/marker_size_m "
                           "against the printed board, and that the board lay flat and still")
    s, R, t = _umeyama(world[best], board[best])
    inlier_views = [v for v, keep in zip(views, best) if keep]

    def residuals(params: np.ndarray) -> np.ndarray:  # world_from_board = (scale e^params[6], rotvec, translation)
        world_R, world_t, world_s = Rotation.from_rotvec(params[:3]).as_matrix(), params[3:6], math.exp(params[6])
        out = []
        for v in inlier_views:
            cam = (world_s * v.object_points @ world_R.T + world_t) @ v.cam_from_world[:, :3].T + v.cam_from_world[:, 3]
            out.append((cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2] - v.image_points).ravel())
        return np.concatenate(out)

    start = np.concatenate([Rotation.from_matrix(R.T).as_rotvec(), -R.T @ t / s, [-math.log(s)]])
    fitted = least_squares(residuals, start, loss="soft_l1", f_scale=1.0).x
    world_from_board = np.eye(4)
    world_from_board[:3, :3] = math.exp(fitted[6]) * Rotation.from_rotvec(fitted[:3]).as_matrix()
    world_from_board[:3, 3] = fitted[3:6]
    board_from_world = np.linalg.inv(world_from_board)
    centre_errors = np.linalg.norm(world[best] @ board_from_world[:3, :3].T + board_from_world[:3, 3] - board[best],
                                   axis=1)
    reprojection = residuals(fitted).reshape(-1, 2)
    return board_from_world, {
        "board_inlier_views": int(best.sum()),
        "alignment_rms_m": float(np.sqrt(np.mean(centre_errors ** 2))),
        "board_reprojection_rms_px": float(np.sqrt(np.mean(np.sum(reprojection ** 2, axis=1)))),
    }


def _umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity dst ≈ s·R·src + t (Umeyama 1991), R a proper rotation."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    a, b = src - src_mean, dst - dst_mean
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ d @ Vt
    s = float(np.trace(np.diag(S) @ d) / max(np.mean(np.sum(a ** 2, axis=1)), 1e-12))
    return s, R, dst_mean - s * R @ src_mean


def _base_from_board(board_cfg: BoardConfig) -> np.ndarray:
    """4x4 rigid robot base <- board. OpenCV's board frame has x along the squares_x edge, y down the printed page and
    so z = x × y INTO the page; face up on the table that z points down. So board x -> base (cos yaw, sin yaw, 0),
    board z -> -base z, board y -> z × x = -(base z × board x)."""
    yaw = math.radians(board_cfg.yaw_deg)
    rz = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    base_from_board = np.eye(4)
    base_from_board[:3, :3] = rz @ np.diag([1.0, -1.0, -1.0])
    base_from_board[:3, 3] = board_cfg.origin_in_base
    return base_from_board
