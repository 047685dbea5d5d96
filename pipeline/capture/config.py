"""The `capture` section of params.yaml: posed images of the workcell and the ChArUco board that scales them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pipeline.common.sections import Section, Range, Vec3, Positive

class BoardConfig(Section):
    """The ChArUco board (OpenCV's `cv2.aruco.CharucoBoard`) that gives an image/video capture its metric scale and
    places it in the robot base frame. Print it, measure a square, lay it flat on the table, face up."""

    squares_x: Annotated[int, Field(ge=3)] = 7
    squares_y: Annotated[int, Field(ge=3)] = 5
    square_size_m: Positive = 0.03
    marker_size_m: Positive = 0.022
    dictionary: str = "DICT_5X5_100"  # a cv2.aruco predefined dictionary name
    # Where the board's origin (OpenCV's board corner (0, 0, 0)) lies in the robot base frame, and the angle of the
    # board's x axis (along `squares_x`) from the base x axis, counter-clockwise seen from above.
    origin_in_base: Vec3 = (0.1, -0.1, 0.0)
    yaw_deg: float = 0.0
    min_views: Annotated[int, Field(ge=2)] = 3  # registered images that must see the board


class CloseUpOrbit(Section):
    """More views on a tighter orbit round one spot, as a person filming a cell steps closer to the small things on
    it: a 25 mm cube is 4 pixels wide from the main orbit at 160x120, too few for its geometry."""

    look_at: Vec3
    views: Annotated[int, Field(ge=1, le=1000)] = 16
    distance_m: Range = Range(low=0.25, high=0.35)
    elevation_deg: Range = Range(low=35.0, high=70.0)


class CaptureConfig(Section):
    """Stage `scene_capture`: posed images of the workcell in nerfstudio's transforms.json convention (robot base
    frame, metres). Sources: `sim` renders the sim workcell from known viewpoints (the default recipe); `posed` reads
    a folder that already holds transforms.json + images; `images` (a folder) and `video` (a file) are posed with
    COLMAP (pycolmap) and scaled/aligned with the ChArUco `board`."""

    source: Literal["sim", "posed", "images", "video"] = "sim"
    path: str = ""  # posed/images: a folder; video: a video file (relative paths resolve against the project root)
    min_images: Annotated[int, Field(ge=3)] = 20
    # source: sim — viewpoints on an orbit around `look_at`, as a person walking round the cell with a phone would
    views: Annotated[int, Field(ge=3, le=1000)] = 64
    # 160x120 keeps CPU splat training within minutes (its cost grows with pixels x Gaussians per pixel)
    width: Annotated[int, Field(ge=32, le=4096)] = 160
    height: Annotated[int, Field(ge=32, le=4096)] = 120
    fovy_deg: Annotated[float, Field(gt=5, lt=170)] = 55.0
    look_at: Vec3 = (0.15, 0.0, 0.08)
    distance_m: Range = Range(low=0.55, high=0.85)
    elevation_deg: Range = Range(low=20.0, high=65.0)
    close_ups: list[CloseUpOrbit] = []  # after the main orbit's views, in this order
    seed: int = 0
    # source: video — keep every n-th frame, at most `max_images`
    video_every_nth_frame: Annotated[int, Field(ge=1)] = 10
    max_images: Annotated[int, Field(ge=3)] = 200
    board: BoardConfig = BoardConfig()
