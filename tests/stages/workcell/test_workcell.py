import json

import mujoco
import numpy as np
import pytest
from isaaclab_so101.constants import JOINT_LIMITS_DEG
from pxr import Usd, UsdPhysics

from pipeline.workcell.build import official_robot_usd
from pipeline.workcell.joints import LEROBOT_JOINT_NAMES, SIM_JOINTS


def test_compiled_model_is_the_official_robot(workcell_xml):
    model = mujoco.MjModel.from_xml_path(str(workcell_xml))
    stage = Usd.Stage.Open(str(official_robot_usd()))
    usd_limits = {}
    for prim in stage.Traverse():
        if prim.IsA(UsdPhysics.RevoluteJoint):
            joint = UsdPhysics.RevoluteJoint(prim)
            usd_limits[prim.GetName()] = (joint.GetLowerLimitAttr().Get(), joint.GetUpperLimitAttr().Get())
    assert set(SIM_JOINTS) <= set(usd_limits)
    for name in SIM_JOINTS:
        lo, hi = np.degrees(model.joint(name).range)
        np.testing.assert_allclose((lo, hi), usd_limits[name], atol=1e-3)
    np.testing.assert_allclose(np.degrees([model.joint(n).range for n in SIM_JOINTS]), JOINT_LIMITS_DEG, atol=1e-3)
    assert [model.actuator(i).name for i in range(model.nu)] == list(LEROBOT_JOINT_NAMES)
    assert {model.camera(i).name for i in range(model.ncam)} == {"front", "wrist"}
    # the jaws collide (the grasp depends on it)
    jaw = model.body("jaw").id
    assert any(model.geom_bodyid[g] == jaw and model.geom_contype[g] for g in range(model.ngeom))
    meta = json.loads((workcell_xml.parent / "workcell.json").read_text())
    assert len(meta["robot_usd_md5"]) == 32


def test_cube_rests_on_table_and_robot_holds_home(workcell):
    workcell.reset(seed=3)
    home = workcell.state()
    for _ in range(60):  # 2 s
        workcell.step(home)
    cube = workcell.cube_position()
    assert abs(cube[2] - workcell.cfg.cube.size / 2) < 0.002  # on the table, penetration < 2 mm
    assert workcell.cube_speed() < 1e-3
    assert np.max(np.abs(workcell.state() - home)) < 3.0  # holds its pose against gravity (so101 units)


def test_actions_move_the_joints(workcell):
    workcell.reset(seed=0)
    target = workcell.state().copy()
    target[0] += 20.0  # shoulder_pan
    for _ in range(45):
        workcell.step(target)
    assert abs(workcell.state()[0] - target[0]) < 2.0


def test_cameras_render_headless(workcell):
    workcell.reset(seed=0)
    obs = workcell.observation()
    h, w = workcell.cfg.cameras.height, workcell.cfg.cameras.width
    front, wrist = obs["observation.images.front"], obs["observation.images.wrist"]
    assert front.shape == wrist.shape == (h, w, 3) and front.dtype == np.uint8
    assert front.std() > 10 and wrist.std() > 5  # a scene, not a blank frame
    assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10
    # the red cube is visible from the front camera
    red = (front[..., 0] > 150) & (front[..., 1] < 80) & (front[..., 2] < 80)
    assert red.sum() > 20
    assert obs["observation.state"].shape == (6,)


def test_same_seed_same_cube_pose(workcell):
    a = workcell.reset(seed=11)
    b = workcell.reset(seed=11)
    c = workcell.reset(seed=12)
    assert a == b and a != c


def test_failed_workcell_build_keeps_the_previous_one(tmp_path, monkeypatch, recipe):
    import pipeline.workcell.build as build
    from pipeline.workcell.stage import build_sim_workcell

    out = tmp_path / "workcell"
    out.mkdir()
    (out / "workcell.xml").write_text("<mujoco/>")

    def broken_compile(cfg, out_dir, progress=None):
        out_dir.mkdir(parents=True)
        (out_dir / "workcell.xml").write_text("half-written")
        raise RuntimeError("simulated crash mid-build")

    monkeypatch.setattr(build, "compile_workcell", broken_compile)
    with pytest.raises(RuntimeError, match="mid-build"):
        build_sim_workcell(recipe, out, log=lambda msg: None)
    assert (out / "workcell.xml").read_text() == "<mujoco/>"
