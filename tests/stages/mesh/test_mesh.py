"""Stage `collision_mesh`: surface depth, plane/object segmentation, solids and hulls, and the whole stage on a
synthetic splat whose geometry is known exactly (a table top at 5 cm and a 3 cm cube standing on it)."""

import json
import math

import numpy as np
import pytest
import torch

from pipeline.common.recipe import Recipe
from pipeline.mesh.config import MeshConfig
from pipeline.splat.rasterize import rasterize_torch, render_surface_depth

TABLE_Z, CUBE = 0.05, 0.03
CUBE_XY = (0.22, 0.04)


def _disc_quat(normal: str) -> list[float]:
    """(w, x, y, z) turning a disc's thin local z axis onto the face normal's axis."""
    h = math.sqrt(0.5)
    return {"z": [1.0, 0, 0, 0], "x": [h, 0, h, 0], "y": [h, h, 0, 0]}[normal]


def _surface_gaussians(with_table: bool = True, with_cube: bool = True, wall: bool = False,
                       opacity: float = 0.99, cube_edge: float = CUBE) -> dict[str, torch.Tensor]:
    """Flat opaque discs tiling a table top and the five visible faces of a cube (or a vertical wall)."""
    means, quats = [], []

    def tile(points, normal):
        means.extend(points)
        quats.extend([_disc_quat(normal)] * len(points))

    g = np.arange(0.0, 0.4, 0.004)
    if with_table:
        tile([(0.0 + x, -0.2 + y, TABLE_Z) for x in g for y in g], "z")
    if wall:
        tile([(0.3, -0.2 + y, TABLE_Z + z) for y in g for z in g[:50]], "x")
    if with_cube:
        c = np.arange(0.0015, cube_edge, 0.003)
        x0, y0, z0 = CUBE_XY[0] - cube_edge / 2, CUBE_XY[1] - cube_edge / 2, TABLE_Z
        tile([(x0 + a, y0 + b, z0 + cube_edge) for a in c for b in c], "z")
        for x in (x0, x0 + cube_edge):
            tile([(x, y0 + a, z0 + b) for a in c for b in c], "x")
        for y in (y0, y0 + cube_edge):
            tile([(x0 + a, y, z0 + b) for a in c for b in c], "y")
    n = len(means)
    scales = np.tile([math.log(0.0025), math.log(0.0025), math.log(0.0003)], (n, 1))
    rgb = np.where(np.asarray(means)[:, 2:3] > TABLE_Z + 0.001, [0.8, 0.1, 0.1], [0.7, 0.55, 0.4])
    return {"means": torch.tensor(means, dtype=torch.float32), "quats": torch.tensor(quats, dtype=torch.float32),
            "scales": torch.tensor(scales, dtype=torch.float32),
            "opacities": torch.full((n,), math.log(opacity / (1 - opacity)), dtype=torch.float32),
            "sh0": torch.tensor((rgb - 0.5) / 0.28209479177387814, dtype=torch.float32)[:, None, :],
            "shN": torch.zeros(n, 0, 3)}


def _write_scene(root, splat: dict[str, torch.Tensor], views: int = 24, width: int = 160, height: int = 120,
                 photos=None):
    """A capture (orbit cameras, photos rendered from the splat, or by `photos(c2w, K, width, height)`) and the splat
    PLY, as the stage reads them."""
    from PIL import Image

    from pipeline.capture.stage import orbit_viewpoints, pinhole_K, write_transforms
    from pipeline.splat.gaussians import save_ply

    cfg = Recipe().capture.model_copy(update={"views": views, "look_at": (0.2, 0.0, 0.07),
                                             "width": width, "height": height})
    K = pinhole_K(cfg.width, cfg.height, cfg.fovy_deg)
    capture, splat_dir = root / "capture", root / "splat"
    (capture / "images").mkdir(parents=True)
    splat_dir.mkdir()
    frames = []
    for i, c2w in enumerate(orbit_viewpoints(cfg)):
        viewmat = torch.tensor(np.linalg.inv(c2w @ np.diag([1.0, -1.0, -1.0, 1.0])), dtype=torch.float32)
        if photos is not None:
            pixels = photos(c2w, K, cfg.width, cfg.height)
        elif len(splat["means"]):
            image, _, _ = rasterize_torch(splat["means"], splat["quats"], torch.exp(splat["scales"]),
                                          torch.sigmoid(splat["opacities"]), splat["sh0"][:, 0] * 0.28209479177387814
                                          + 0.5, viewmat[None], torch.tensor(K, dtype=torch.float32)[None],
                                          cfg.width, cfg.height)
            pixels = (image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        else:
            pixels = np.zeros((cfg.height, cfg.width, 3), np.uint8)
        Image.fromarray(pixels).save(capture / f"images/{i}.png")
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": c2w})
    write_transforms(capture, cfg.width, cfg.height, K, frames)
    save_ply(splat_dir / "splat.ply", splat)
    return capture, splat_dir


def _recipe(**mesh) -> Recipe:
    return Recipe().model_copy(update={"mesh": MeshConfig(remove_robot=False, **mesh)})


def _build(tmp_path, splat, size=(160, 120), photos=None, **mesh):
    from pipeline.mesh.stage import build_collision_mesh

    capture, splat_dir = _write_scene(tmp_path, splat, width=size[0], height=size[1], photos=photos)
    return build_collision_mesh(_recipe(**mesh), capture, splat_dir, tmp_path / "no_workcell.xml",
                                tmp_path / "mesh", device="cpu", log=lambda *_: None, progress=False)


def _photos_of_cube(edge: float = CUBE):
    """Photos of the table and a red cube of `edge` at CUBE_XY as a camera takes them (ray-traced: sharp outlines).
    The splat's own renders blur a 3 cm cube's outline by about a disc, to ~36 mm."""
    from raytraced_photos import photo, ray_box

    cube = (lambda o, d: ray_box(o, d, CUBE_XY, (edge, edge, edge), 0.0, base_z=TABLE_Z)), [204.0, 26.0, 26.0]
    return lambda c2w, K, width, height: photo(c2w, K, width, height, [cube], table_z=TABLE_Z)


def test_synthetic_scene_recovers_plane_height_and_cube_size(tmp_path):
    import trimesh

    from pipeline.mesh.stage import check_hulls

    # 320x240 views and a 2-voxel truncation: TSDF truncation widens edges seen at a grazing angle by up to about
    # its width, the default capture's pixels are ~6 mm at 0.7 m
    metrics = _build(tmp_path, _surface_gaussians(), size=(320, 240), photos=_photos_of_cube(), trunc_voxels=2,
                     expected_objects=1)
    out = tmp_path / "mesh"
    assert abs(metrics["support_height_mm"] - 1000 * TABLE_Z) < 1.5
    assert metrics["support_tilt_deg"] < 0.5
    assert metrics["objects_found"] == 1 and metrics["chamfer_mm"] is None  # no ground-truth depth here
    scene = json.loads((out / "scene.json").read_text())
    table, cube = scene["parts"]
    assert (table["role"], cube["role"]) == ("support", "object") and table["mass_kg"] is None
    # the table box spans the tiled 0.4 m square; its top is the plane
    assert np.allclose(np.array(table["bbox_max"][:2]) - table["bbox_min"][:2], 0.4, atol=0.02)
    assert abs(table["bbox_max"][2] - TABLE_Z) < 0.002
    # the cube, refitted to the photos: every axis within 1.5 mm; centred where it stands; one hull (a box)
    assert cube["silhouette"]["used"], cube["silhouette"]
    assert np.allclose(cube["size_m"], CUBE, atol=0.0015), cube["size_m"]
    assert len(cube["hulls"]) == 1
    assert np.allclose(cube["centre"][:2], CUBE_XY, atol=0.0015)
    assert cube["mass_kg"] == pytest.approx(cube["volume_m3"] * 960.0)
    assert 0.85 * CUBE**3 < cube["volume_m3"] < 1.15 * CUBE**3
    # every hull file is closed, convex, of positive volume; scene.json names exactly the files on disk
    checks = check_hulls(out)
    assert checks and all(c["ok"] for c in checks)
    listed = sorted(f for part in scene["parts"] for f in part["hulls"])
    assert listed == sorted(c["file"] for c in checks)
    visual = trimesh.load(out / "scene_visual.obj", force="mesh")
    assert len(visual.faces) > 1000 and visual.bounds[1][2] < TABLE_Z + CUBE + 0.01
    assert (out / "preview.png").stat().st_size > 10_000
    config = json.loads((out / "config.json").read_text())
    assert config["mesh"]["expected_objects"] == 1 and len(config["splat_md5"]) == 32


def test_empty_or_transparent_splat_fails_clearly(tmp_path):
    from pipeline.mesh.fusion import MeshError

    empty = {k: v[:0] for k, v in _surface_gaussians().items()}
    with pytest.raises(MeshError, match="holds no Gaussians"):
        _build(tmp_path / "empty", empty)
    with pytest.raises(MeshError, match="no surface inside the workspace"):
        _build(tmp_path / "faint", _surface_gaussians(opacity=0.001))


def test_splat_without_a_support_plane_fails_clearly(tmp_path):
    from pipeline.mesh.fusion import MeshError

    # a vertical wall and a cube, nothing horizontal to stand on
    with pytest.raises(MeshError, match=r"no support plane.*planes found: (8\d|90) deg tilt"):
        _build(tmp_path, _surface_gaussians(with_table=False, wall=True))
    assert not (tmp_path / "mesh").exists()  # nothing half-written


def test_surface_depth_finds_the_front_surface_not_the_average():
    """Two parallel layers of faint discs 10 cm apart: expected depth lands between them, the surface depth on the
    front one."""
    n = 30
    g = torch.linspace(-0.1, 0.1, n)
    xy = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    front = torch.cat([xy, torch.full((len(xy), 1), 0.5)], 1)
    means = torch.cat([front, front + torch.tensor([0, 0, 0.1])])
    m = len(means)
    quats, scales = torch.tensor([[1.0, 0, 0, 0]] * m), torch.tensor([[0.006, 0.006, 0.0003]] * m)
    opacities = torch.full((m,), 0.15)
    K = torch.tensor([[80.0, 0, 32], [0, 80.0, 24], [0, 0, 1]])
    viewmat = torch.eye(4)
    depth, alpha = render_surface_depth(means, quats, scales, opacities, viewmat, K, 64, 48)
    centre = depth[16:32, 24:40]
    assert torch.all((centre - 0.5).abs() < 0.002), centre
    assert float(alpha[24, 32]) > 0.8
    image, _, _ = rasterize_torch(means, quats, scales, opacities, torch.zeros(m, 3), viewmat[None], K[None], 64, 48,
                                  render_mode="RGB+ED")
    assert float(image[0, 24, 32, 3]) > 0.52  # gsplat's expected depth is pulled towards the back layer
    # where no Gaussian reaches, no depth
    far = torch.eye(4)
    far[0, 3] = 5.0
    depth, alpha = render_surface_depth(means, quats, scales, opacities, far, K, 64, 48)
    assert float(depth.abs().max()) == 0.0 and float(alpha.max()) == 0.0


def test_voxel_surface_is_closed_with_the_right_volume():
    from pipeline.mesh.segment import voxel_surface

    occupancy = np.zeros((5, 6, 4), bool)
    occupancy[1:4, 1:5, 0:3] = True
    occupancy[2, 2, 2] = False  # a pit in the top
    mesh = voxel_surface(occupancy, 0.01)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(35e-6)
    assert np.allclose(mesh.bounds, [[0.01, 0.01, 0.0], [0.04, 0.05, 0.03]])


def test_support_plane_fit_recovers_a_tilted_plane_and_rejects_walls():
    from pipeline.mesh.fusion import MeshError
    from pipeline.mesh.segment import fit_support_plane

    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.2, 0.2, (4000, 2))
    tilt = math.radians(3)
    z = 0.1 + xy[:, 0] * math.tan(tilt) + rng.normal(0, 0.001, len(xy))
    clutter = rng.uniform(-0.2, 0.2, (500, 3))
    plane, inliers = fit_support_plane(np.concatenate([np.c_[xy, z], clutter]), MeshConfig())
    assert plane.tilt_deg == pytest.approx(3.0, abs=0.2)
    assert float(plane.height(np.array([[0.0, 0.0, 0.1]]))[0]) == pytest.approx(0.0, abs=0.001)
    assert inliers[:4000].mean() > 0.95
    wall = np.c_[np.full(3000, 0.3), rng.uniform(-0.2, 0.2, (3000, 2))]
    with pytest.raises(MeshError, match="no support plane"):
        fit_support_plane(wall, MeshConfig())


def test_chamfer_of_shifted_copies():
    from pipeline.mesh.truth import chamfer_mm

    points = np.random.default_rng(0).uniform(0, 1, (2000, 3)) * [1, 1, 0]
    result = chamfer_mm(points, points + [0, 0, 0.002])
    assert result["chamfer_mm"] == pytest.approx(2.0, abs=1e-6)
    assert result["reconstruction_to_truth_mm"] == pytest.approx(2.0, abs=1e-6)


def _cube_truth(edge: float = CUBE, yaw_deg: float = 0.0) -> dict:
    """Ground truth of a cube standing on the table at CUBE_XY, as `ground_truth_objects` reports it."""
    return {"name": "cube", "centre": [CUBE_XY[0], CUBE_XY[1], TABLE_Z + edge / 2], "size_m": [edge, edge, edge],
            "yaw_deg": yaw_deg, "volume_m3": edge**3, "mass_kg": 960.0 * edge**3, "dynamic": True}


def test_object_gate_fails_a_cube_a_third_too_small_naming_object_axis_and_error(tmp_path):
    """The synthetic scene with its cube shrunk to 70 % of the true edge (a third of its volume): the scene-wide
    Chamfer gate could not tell, the object gate names the cube, each axis and the error; the true-size cube of the
    same scene passes."""
    from pipeline.mesh.object_gate import object_gate

    gates = MeshConfig().object_gates
    true_edge = CUBE
    # the splat's cube, and the cube in the photos, are smaller than the real one
    _build(tmp_path / "small", _surface_gaussians(cube_edge=0.7 * true_edge), size=(320, 240),
           photos=_photos_of_cube(0.7 * true_edge), trunc_voxels=2, expected_objects=1)
    scene = json.loads((tmp_path / "small" / "mesh" / "scene.json").read_text())
    part = next(p for p in scene["parts"] if p["role"] == "object")
    part["name"] = "cube"  # what `_name_objects` does with a capture's ground truth
    result = object_gate(scene["parts"], [_cube_truth(true_edge)], gates)
    assert result["measured"]
    problems = "\n".join(result["problems"])
    for axis in ("long side", "short side", "height"):
        assert f"cube: {axis} " in problems, problems
    cube = result["objects"]["cube"]
    assert all(-10.5 < e < -7.5 for e in cube["size_error_mm"]), cube  # 9 mm short
    assert "cube: volume 0." in problems and 0.25 < cube["volume_ratio"] < 0.45
    assert "cube: mass" in problems and "g vs 25.9 g" in problems  # the true cube: 960 kg/m3 x (3 cm)^3
    # a missing object is named too; an object without thresholds (no `default`) is measured, not gated
    missing = object_gate([p for p in scene["parts"] if p["role"] == "support"], [_cube_truth(true_edge)], gates)
    assert missing["problems"] and missing["problems"][0].startswith("cube: not found on the support")
    ungated = object_gate(scene["parts"], [_cube_truth(true_edge)], {})
    assert ungated["problems"] == [] and ungated["objects"]["cube"]["volume_ratio"] == cube["volume_ratio"]
    assert object_gate(scene["parts"], None, gates) == {"measured": False, "objects": {}, "problems": []}

    _build(tmp_path / "true", _surface_gaussians(), size=(320, 240), photos=_photos_of_cube(), trunc_voxels=2,
           expected_objects=1)
    scene = json.loads((tmp_path / "true" / "mesh" / "scene.json").read_text())
    part = next(p for p in scene["parts"] if p["role"] == "object")
    part["name"] = "cube"
    # the same scene with the true cube passes the default gate
    assert object_gate(scene["parts"], [_cube_truth(true_edge)], gates)["problems"] == []


def test_photos_correct_a_splat_whose_cube_is_too_small(tmp_path):
    """The splat's cube is 70 % of the one the photos show (what 3DGS does to a small plain object): refitted to its
    outline in the 160x120 photos (ray-traced: a camera's sharp outline), it passes the default object gate; the
    splat's geometry alone fails it."""
    from raytraced_photos import photo, ray_box

    from pipeline.mesh.object_gate import object_gate

    true_cube = (lambda o, d: ray_box(o, d, CUBE_XY, (CUBE, CUBE, CUBE), 0.0, base_z=TABLE_Z)), [204.0, 26.0, 26.0]

    def photos(c2w, K, width, height):
        return photo(c2w, K, width, height, [true_cube], table_z=TABLE_Z)

    gates, truth = MeshConfig().object_gates, [_cube_truth(CUBE)]
    for refine in (True, False):
        metrics = _build(tmp_path / str(refine), _surface_gaussians(cube_edge=0.7 * CUBE),
                         photos=photos, expected_objects=1, silhouette_refine=refine)
        assert metrics["objects_found"] == 1
        scene = json.loads((tmp_path / str(refine) / "mesh" / "scene.json").read_text())
        cube = next(p for p in scene["parts"] if p["role"] == "object")
        cube["name"] = "cube"
        problems = object_gate(scene["parts"], truth, gates)["problems"]
        if refine:
            assert cube["silhouette"]["used"] and cube["silhouette"]["footprint"] == "box", cube["silhouette"]
            assert problems == [], (problems, cube["silhouette"])
            assert np.allclose(cube["size_m"], CUBE, atol=0.002), cube["size_m"]
        else:
            assert "silhouette" not in cube and any("cube: height" in p for p in problems), problems


def test_yaw_error_respects_the_footprint_symmetry():
    from pipeline.mesh.object_gate import object_errors, yaw_error_deg

    assert yaw_error_deg(88.0, 2.0, 90.0) == pytest.approx(4.0)  # a square: 88 deg is 2 deg from 0
    assert yaw_error_deg(178.0, 2.0, 180.0) == pytest.approx(4.0)
    assert yaw_error_deg(92.0, 2.0, 180.0) == pytest.approx(90.0)  # a rectangle turned a quarter
    part = {"size_m": [0.02, 0.05, 0.03], "yaw_deg": 0.0, "centre": [0.0, 0.0, 0.015], "volume_m3": 3e-5,
            "mass_kg": 0.0288}
    truth = {"size_m": [0.05, 0.02, 0.03], "yaw_deg": 90.0, "centre": [0.003, 0.004, 0.015], "volume_m3": 3e-5,
             "mass_kg": 0.03}
    e = object_errors(part, truth)  # the same box, its sides listed the other way round
    assert e["size_error_mm"] == [0.0, 0.0, 0.0] and e["yaw_error_deg"] == 0.0
    assert e["centre_error_mm"] == pytest.approx(5.0) and e["mass_ratio"] == pytest.approx(0.96)


def test_ground_truth_objects_of_the_workcell(workcell_xml, recipe):
    """The sim workcell's cube (posed as a capture recorded it) and bin: oriented size, yaw, volume, mass."""
    from pipeline.mesh.truth import ground_truth_objects

    yaw = math.radians(30.0)
    state = {"cube_position": [0.2, 0.03, recipe.workcell.cube.size / 2],
             "cube_quat_wxyz": [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]}
    objects = {o["name"]: o for o in ground_truth_objects(workcell_xml, state)}
    assert set(objects) == {"cube", "bin"}
    cube, edge = objects["cube"], recipe.workcell.cube.size
    assert cube["size_m"] == pytest.approx([edge] * 3) and cube["dynamic"]
    assert cube["yaw_deg"] % 90 == pytest.approx(30.0)
    assert cube["volume_m3"] == pytest.approx(edge**3) and cube["mass_kg"] == pytest.approx(recipe.workcell.cube.mass)
    assert cube["centre"] == pytest.approx(state["cube_position"], abs=1e-9)
    b = recipe.workcell.bin
    bin_ = objects["bin"]
    assert not bin_["dynamic"] and bin_["mass_kg"] is None
    outer = b.inner_size_xy[0] + 2 * b.wall_thickness
    assert bin_["size_m"][:2] == pytest.approx([outer, outer], abs=1e-6)
    assert bin_["centre"][:2] == pytest.approx(b.center_xy, abs=1e-6)


def test_oriented_extent_keeps_a_rounded_footprints_orientation_despite_a_stray_point():
    """A 25 mm square with rounded corners (a small reconstructed cube), turned 30 deg, plus one stray point off a
    corner: the least-area quantile box finds 30 deg and the side, and the long side comes first."""
    from pipeline.mesh.segment import oriented_extent

    rng = np.random.default_rng(0)
    square = rng.uniform(-0.0125, 0.0125, size=(4000, 2))
    corner = np.maximum(np.abs(square) - 0.0125 + 0.005, 0)
    square = square[np.hypot(corner[:, 0], corner[:, 1]) <= 0.005]  # corners rounded with a 5 mm radius
    yaw = math.radians(30.0)
    rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    points = np.vstack([square @ rot.T, [[0.02, 0.02]]])
    size, angle = oriented_extent(points, trim=0.01)
    assert math.degrees(angle) % 90 == pytest.approx(30.0, abs=3.0)
    assert size == pytest.approx([0.025, 0.025], abs=0.0015)
    long_rect = np.vstack([rng.uniform([-0.03, -0.01], [0.03, 0.01], size=(2000, 2)) @ rot.T])
    size, angle = oriented_extent(long_rect, trim=0.01)
    assert size[0] > size[1] and math.degrees(angle) % 180 == pytest.approx(30.0, abs=1.0)
