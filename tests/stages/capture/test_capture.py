"""`scene_capture`: the sim capture's cameras, depth and points agree with the scene; posed folders; bad input."""

import json
import shutil

import numpy as np
import pytest

from pipeline.capture.stage import Capture, CaptureError, build_scene_capture


@pytest.fixture(scope="module")
def capture_recipe(recipe):
    return recipe.model_copy(update={"capture": recipe.capture.model_copy(
        update={"views": 12, "width": 128, "height": 96, "min_images": 8})})


@pytest.fixture(scope="module")
def sim_capture(capture_recipe, workcell_xml, tmp_path_factory):
    out = tmp_path_factory.mktemp("capture") / "capture"
    metrics = build_scene_capture(capture_recipe, out, workcell_xml=workcell_xml, progress=False)
    assert metrics["images"] == 12 and metrics["source"] == "sim"
    return out


def test_sim_capture_is_a_nerfstudio_capture(sim_capture):
    meta = json.loads((sim_capture / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and (meta["w"], meta["h"]) == (128, 96)
    assert meta["ply_file_path"] == "sparse_pc.ply" and len(meta["frames"]) == 12
    capture = Capture.load(sim_capture)
    assert capture.image(0).shape == (96, 128, 3)
    for name in ("preview.png", "cameras.png", "metrics.json", "scene_state.json"):
        assert (sim_capture / name).is_file()
    # every camera stands above the table and looks down towards the workcell
    for frame in capture.frames:
        assert frame.camera_to_world[2, 3] > 0.1 and frame.camera_to_world[2, 2] > 0  # OpenGL: looking down -z


def test_cube_centre_projects_onto_the_red_cube_in_every_view(sim_capture):
    """Intrinsics and extrinsics are those the images were rendered with (sub-pixel)."""
    capture = Capture.load(sim_capture)
    cube = np.array(json.loads((sim_capture / "scene_state.json").read_text())["cube_position"])
    checked = 0
    for i, frame in enumerate(capture.frames):
        camera = frame.viewmat() @ np.append(cube, 1.0)
        u, v = (capture.K @ camera[:3])[:2] / camera[2]
        image = capture.image(i).astype(int)
        red = (image[..., 0] > 150) & (image[..., 1] < 80) & (image[..., 2] < 80)
        if red.sum() < 8:  # hidden behind the robot from this side
            continue
        ys, xs = np.nonzero(red)
        assert abs(xs.mean() + 0.5 - u) < 1.0 and abs(ys.mean() + 0.5 - v) < 1.0, (i, u, v)
        checked += 1
    assert checked >= 6


def test_depth_and_points_lie_on_the_scene(sim_capture):
    capture = Capture.load(sim_capture)
    # table-top pixels (the cube stands on the table: its bottom is z = 0) back-projected through the depth
    depth = capture.depth(0)
    image = capture.image(0).astype(int)
    table = ((image[..., 0] - image[..., 2] > 40) & (image[..., 0] > 120) & (image[..., 1] > 80)
             & (image[..., 1] < 0.9 * image[..., 0]) & (depth > 0))  # brown, not the yellow robot
    v, u = np.nonzero(table)
    z = depth[v, u]
    camera = np.stack([(u + 0.5 - capture.K[0, 2]) / capture.K[0, 0] * z,
                       (v + 0.5 - capture.K[1, 2]) / capture.K[1, 1] * z, z, np.ones_like(z)])
    world = np.linalg.inv(capture.frames[0].viewmat()) @ camera
    assert len(u) > 500 and np.median(np.abs(world[2])) < 0.002
    points = capture.points()
    assert {"x", "y", "z", "red", "green", "blue", "frame"} <= set(points)
    assert len(points["x"]) > 1000 and set(np.unique(points["frame"])) <= set(range(12))


def test_posed_source_copies_and_validates(capture_recipe, sim_capture, tmp_path):
    posed = capture_recipe.model_copy(update={"capture": capture_recipe.capture.model_copy(
        update={"source": "posed", "path": str(sim_capture)})})
    metrics = build_scene_capture(posed, tmp_path / "copy", progress=False)
    assert metrics["images"] == 12 and (tmp_path / "copy" / "images" / "frame_00011.png").is_file()

    broken = tmp_path / "broken"
    shutil.copytree(sim_capture, broken)
    (broken / "images" / "frame_00003.png").unlink()
    bad = posed.model_copy(update={"capture": posed.capture.model_copy(update={"path": str(broken)})})
    with pytest.raises(CaptureError, match="frame 3 image images/frame_00003.png does not exist"):
        build_scene_capture(bad, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    meta = json.loads((sim_capture / "transforms.json").read_text())
    meta["k1"] = 0.1
    distorted = tmp_path / "distorted"
    shutil.copytree(sim_capture, distorted)
    (distorted / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(CaptureError, match="lens distortion"):
        Capture.load(distorted)


def test_too_few_images_and_missing_inputs_are_refused(capture_recipe, workcell_xml, tmp_path):
    few = capture_recipe.model_copy(update={"capture": capture_recipe.capture.model_copy(
        update={"views": 4, "min_images": 8})})
    with pytest.raises(CaptureError, match="4 posed images; at least capture.min_images=8"):
        build_scene_capture(few, tmp_path / "few", workcell_xml=workcell_xml, progress=False)
    with pytest.raises(CaptureError, match="materialize `sim_workcell` first"):
        build_scene_capture(capture_recipe, tmp_path / "x", workcell_xml=tmp_path / "absent.xml")
    posed = capture_recipe.model_copy(update={"capture": capture_recipe.capture.model_copy(
        update={"source": "posed", "path": ""})})
    with pytest.raises(CaptureError, match="needs capture.path"):
        build_scene_capture(posed, tmp_path / "x")
    assert not any((tmp_path / name).exists() for name in ("few", "x"))


def test_holdout_is_every_kth_view(sim_capture):
    assert Capture.load(sim_capture).holdout_indices(4) == [0, 4, 8]


def test_close_up_orbits_follow_the_main_orbit_and_look_at_their_spot():
    """`capture.close_ups`: extra views on a tighter orbit round a spot, after the main orbit's views, which stay
    exactly what they were without them (a recipe that adds close-ups keeps its other views)."""
    from pipeline.capture.config import CaptureConfig
    from pipeline.capture.stage import orbit_viewpoints

    plain = CaptureConfig(views=12)
    spot = np.array([0.2, 0.0, 0.0125])
    close = CaptureConfig.model_validate({"views": 12, "close_ups": [
        {"look_at": spot.tolist(), "views": 5, "distance_m": {"low": 0.25, "high": 0.35}}]})
    base, more = orbit_viewpoints(plain), orbit_viewpoints(close)
    assert len(more) == 17
    for a, b in zip(base, more[:12]):
        np.testing.assert_array_equal(a, b)
    for c2w in more[12:]:
        position, back = c2w[:3, 3], c2w[:3, 2]  # OpenGL/nerfstudio: the camera looks along -z
        offset = position - spot
        assert 0.25 <= np.linalg.norm(offset) <= 0.35
        np.testing.assert_allclose(back, offset / np.linalg.norm(offset), atol=1e-9)
