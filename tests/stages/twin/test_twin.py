"""The `usd_twin` stage on a synthetic scene with known geometry: a 60x80 cm table top and a 25 mm cube on it."""

import shutil

import numpy as np
import pytest

from tests_helpers import REAL_RECORDING


def test_splat_split_assigns_every_gaussian_once(twin_inputs, synthetic_twin):
    parts = synthetic_twin["parts"]
    counts = (len(parts.scene["means"]), len(parts.robot["means"]), len(parts.objects["cube"]["means"]))
    assert sum(counts) == len(twin_inputs["gaussians"]["means"])
    assert counts[2] >= 35  # the cube's 40 (the lowest, within 2 mm of the table, stay with the table)
    assert counts[1] == 25  # the robot's, at its capture pose


def test_twin_stage_round_trips(twin_inputs, synthetic_twin, recipe):
    from pxr import Usd, UsdGeom, UsdPhysics, UsdShade, UsdVol

    from pipeline.twin.author import camera_intrinsics
    from pipeline.twin.stage import stage_summary, validation_errors

    path = synthetic_twin["path"]
    stage = Usd.Stage.Open(str(path))
    assert str(stage.GetDefaultPrim().GetPath()) == "/World"
    assert UsdGeom.GetStageUpAxis(stage) == "Z" and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetRootLayer().customLayerData["twinloop"]["upstream_md5"] == {"models/mesh/scene.json": "abc123"}
    summary = stage_summary(path)
    assert summary["articulation_roots"] == ["/World/Robot/base"]
    assert summary["colliders"] == 3 and summary["rigid_bodies"] == ["/World/Objects/cube"]
    assert validation_errors(path) == []
    cube = stage.GetPrimAtPath("/World/Objects/cube")
    assert UsdPhysics.MassAPI(cube).GetMassAttr().Get() == pytest.approx(0.015)

    # the splat prims hold exactly the Gaussians given, in world coordinates once the cube's frame is applied
    parts = synthetic_twin["parts"]
    scene_prim = UsdVol.ParticleField3DGaussianSplat(stage.GetPrimAtPath("/World/Splat/scene"))
    np.testing.assert_allclose(np.asarray(scene_prim.GetPositionsAttr().Get()), parts.scene["means"], atol=1e-7)
    np.testing.assert_allclose(np.asarray(scene_prim.GetOpacitiesAttr().Get()), parts.scene["opacities"])
    np.testing.assert_allclose(np.asarray(scene_prim.GetScalesAttr().Get()), parts.scene["scales"])
    sh = np.asarray(scene_prim.GetRadianceSphericalHarmonicsCoefficientsAttr().Get())
    np.testing.assert_allclose(sh.reshape(-1, 16, 3), parts.scene["sh"])
    assert scene_prim.GetRadianceSphericalHarmonicsDegreeAttr().Get() == 3
    quats = np.array([[q.GetReal(), *q.GetImaginary()] for q in scene_prim.GetOrientationsAttr().Get()])
    np.testing.assert_allclose(quats, parts.scene["quats"], atol=1e-7)
    robot_prim = stage.GetPrimAtPath("/World/Splat/robot_at_capture")
    assert UsdGeom.Imageable(robot_prim).ComputeVisibility() == UsdGeom.Tokens.invisible
    from pipeline.twin.render import read_splats

    visible = read_splats(stage)
    assert len(visible["means"]) == len(parts.scene["means"]) + len(parts.objects["cube"]["means"])
    n_cube = len(parts.objects["cube"]["means"])  # /World/Objects comes before /World/Splat
    np.testing.assert_allclose(visible["means"][:n_cube].numpy(), parts.objects["cube"]["means"], atol=1e-6)

    # cameras: the capture rig's intrinsics and poses come back exactly
    cam = stage.GetPrimAtPath("/World/Capture/view_001")
    K, w, h = camera_intrinsics(cam)
    np.testing.assert_allclose(K, twin_inputs["capture"].K, atol=1e-9)
    assert (w, h) == (32, 24)
    world = np.array(UsdGeom.Xformable(cam).ComputeLocalToWorldTransform(Usd.TimeCode.Default())).T
    np.testing.assert_allclose(world, twin_inputs["capture"].frames[1].camera_to_world, atol=1e-9)
    assert stage.GetPrimAtPath("/World/Robot/gripper/wrist").IsA(UsdGeom.Camera)

    # the robot copy beside the twin reads anywhere: no Omniverse MDL left, UsdPreviewSurface instead
    robot = Usd.Stage.Open(str(path.parent / "robot" / "so101.usd"))
    shaders = [UsdShade.Shader(p) for p in robot.TraverseAll() if p.IsA(UsdShade.Shader)]
    assert shaders and all(s.GetShaderId() == "UsdPreviewSurface" for s in shaders)


def test_twin_loads_in_newton_and_settles(synthetic_twin, recipe):
    from pipeline.twin.physics import load_twin, settle, settle_problems

    loaded = load_twin(synthetic_twin["path"])
    assert sorted(loaded.object_bodies) == ["cube"] and len(loaded.robot_dofs) == 6
    assert loaded.physics_dt == pytest.approx(recipe.twin.physics_dt_s)
    result = settle(synthetic_twin["path"], 1.0, twin=loaded)
    assert settle_problems(result, recipe.twin) == []
    assert result["objects"]["cube"]["drift_mm"] < 2.0 and result["penetration_end_mm"] < 1.0


def test_object_inside_the_table_fails_the_settle_check(synthetic_twin, recipe, tmp_path):
    from pxr import Gf, Usd, UsdGeom

    from pipeline.twin.physics import settle, settle_problems

    broken = tmp_path / "twin"
    shutil.copytree(synthetic_twin["path"].parent, broken)
    stage = Usd.Stage.Open(str(broken / "twin.usd"))
    translate = UsdGeom.Xformable(stage.GetPrimAtPath("/World/Objects/cube")).GetOrderedXformOps()[0]
    x, y, z = translate.Get()
    translate.Set(Gf.Vec3d(x, y, z - 0.012))  # half the cube below the table top
    stage.Save()
    problems = settle_problems(settle(broken / "twin.usd", 1.0), recipe.twin)
    assert any("penetration at the start" in p for p in problems)


def test_unknown_dynamic_object_is_a_clear_error(twin_inputs, recipe, tmp_path):
    from pipeline.workcell.build import official_robot_usd
    from pipeline.twin.author import TwinError, author_twin, split_splat

    bad = recipe.model_copy(update={"twin": recipe.twin.model_copy(update={"dynamic_objects": ("mug",)})})
    parts = split_splat(twin_inputs["gaussians"], twin_inputs["scene"], [], None, 0.004, 0.01)
    with pytest.raises(TwinError, match=r"dynamic_objects names \['mug'\].*parts \['bin', 'cube', 'table'\]"):
        author_twin(bad, tmp_path / "twin", twin_inputs["scene"], twin_inputs["mesh_dir"], parts, twin_inputs["capture"],
                    official_robot_usd(), {})
    assert not (tmp_path / "twin").exists()


def test_penetration_depth_of_overlapping_boxes():
    from pipeline.twin.physics import penetration_depth

    def box(centre, half=0.01):
        corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * half
        return corners + centre

    assert penetration_depth(box((0, 0, 0)), box((0, 0, 0.017))) == pytest.approx(0.003, abs=1e-9)
    assert penetration_depth(box((0, 0, 0)), box((0, 0, 0.0201))) == 0.0


@pytest.mark.skipif(not (REAL_RECORDING / "meta" / "info.json").is_file(), reason="real recording not present")
def test_replaying_a_real_recording_tracks_its_joints(synthetic_twin):
    from pipeline.twin.physics import load_twin
    from pipeline.twin.replay import replay_dataset, summarize

    replays = replay_dataset(load_twin(synthetic_twin["path"]), REAL_RECORDING, max_episodes=1)
    summary = summarize(replays)
    assert summary["episodes"] == 1 and summary["frames"] == len(replays[0].recorded_deg) > 300
    # the twin follows the real arm within a few degrees; a unit or joint-order mistake would be tens of degrees off
    assert 0.1 < summary["mean_rmse_deg"] < 8.0
    assert all(v < 10.0 for v in summary["rmse_deg"].values())
