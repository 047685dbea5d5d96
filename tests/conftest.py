import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")

from tests_helpers import ROOT  # the project root (tests/ sits one level below it)



@pytest.fixture(scope="session")
def recipe():
    from pipeline.common.recipe import load_recipe

    return load_recipe(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def workcell_xml(recipe, tmp_path_factory):
    """The default workcell, compiled once per test session from the official SO-101 USD (~1 min on 2 cores)."""
    from pipeline.workcell.build import compile_workcell

    return compile_workcell(recipe.workcell, tmp_path_factory.mktemp("workcell"))


@pytest.fixture
def workcell(workcell_xml, recipe):
    from pipeline.workcell.cell import Workcell

    wc = Workcell(workcell_xml, recipe.workcell)
    yield wc
    wc.close()


@pytest.fixture(scope="session")
def small_recipe(recipe):
    """Tiny cameras and few episodes: a real recording in seconds, not minutes."""
    cams = recipe.workcell.cameras.model_copy(update={"width": 64, "height": 48})
    checks = recipe.demos.checks.model_copy(update={"min_episodes": 2})
    return recipe.model_copy(update={
        "workcell": recipe.workcell.model_copy(update={"cameras": cams}),
        "demos": recipe.demos.model_copy(update={"episodes": 2, "checks": checks}),
    })


@pytest.fixture(scope="session")
def recorded(small_recipe, workcell_xml, tmp_path_factory):
    from pipeline.demos.stage import build_demos

    root = tmp_path_factory.mktemp("demos") / "demos"
    result = build_demos(small_recipe, root, workcell_xml=workcell_xml)
    assert result["recorded_episodes"] == 2
    return root


# --- a synthetic twin: a 60x80 cm table top, a fixed bin and a 25 mm cube (tests/stages/twin, tests/stages/rl, tests/stages/eval, tests/orchestration) ---

def _box_obj(path, size, centre):
    import trimesh

    box = trimesh.creation.box(extents=size)
    box.apply_translation(centre)
    box.export(path)


def _part(name, role, size, centre, mass):
    lo = (np.asarray(centre) - np.asarray(size) / 2).tolist()
    hi = (np.asarray(centre) + np.asarray(size) / 2).tolist()
    return {"name": name, "role": role, "hulls": [f"hulls/{name}_0.obj"], "bbox_min": lo, "bbox_max": hi,
            "centre": list(centre), "volume_m3": float(np.prod(size)), "mass_kg": mass, "static": mass is None}


CUBE_CENTRE = (0.22, 0.05, 0.0125)
BIN_CENTRE = (0.12, 0.17, 0.002)


@pytest.fixture(scope="session")
def twin_inputs(tmp_path_factory):
    """scene.json + hull OBJs, Gaussians (table, cube, some on the robot), a two-view capture."""
    from PIL import Image

    from pipeline.capture.stage import Capture, look_at_camera_to_world, pinhole_K, write_transforms

    root = tmp_path_factory.mktemp("twin_inputs")
    mesh_dir = root / "mesh"
    (mesh_dir / "hulls").mkdir(parents=True)
    _box_obj(mesh_dir / "hulls" / "table_0.obj", (0.6, 0.8, 0.02), (0.2, 0.0, -0.01))
    _box_obj(mesh_dir / "hulls" / "cube_0.obj", (0.025,) * 3, CUBE_CENTRE)
    _box_obj(mesh_dir / "hulls" / "bin_0.obj", (0.1, 0.1, 0.004), BIN_CENTRE)  # the bin's floor: a fixed part
    scene = {"support_plane": {"normal": [0.0, 0.0, 1.0], "offset": 0.0, "tilt_deg": 0.0},
             "parts": [_part("table", "support", (0.6, 0.8, 0.02), (0.2, 0.0, -0.01), None),
                       _part("cube", "object", (0.025,) * 3, CUBE_CENTRE, 0.015),
                       _part("bin", "object", (0.1, 0.1, 0.004), BIN_CENTRE, 0.02)]}
    (mesh_dir / "scene.json").write_text(json.dumps(scene))

    rng = np.random.default_rng(0)
    table = np.c_[rng.uniform(0.0, 0.4, (300, 2)) - [0, 0.2], np.zeros(300)]
    cube = np.asarray(CUBE_CENTRE) + rng.uniform(-0.0125, 0.0125, (40, 3))
    robot = np.c_[rng.uniform(-0.03, 0.03, (25, 2)), rng.uniform(0.05, 0.1, 25)]
    means = np.concatenate([table, cube, robot]).astype(np.float32)
    n = len(means)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    gaussians = {"means": means, "quats": quats / np.linalg.norm(quats, axis=1, keepdims=True),
                 "scales": rng.uniform(0.002, 0.006, (n, 3)).astype(np.float32),
                 "opacities": rng.uniform(0.3, 0.95, n).astype(np.float32),
                 "sh": rng.normal(scale=0.3, size=(n, 16, 3)).astype(np.float32)}

    cap_dir = root / "capture"
    (cap_dir / "images").mkdir(parents=True)
    K = pinhole_K(32, 24, 55.0)
    frames = []
    for i, eye in enumerate(((0.7, 0.0, 0.4), (0.3, -0.6, 0.5))):
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(cap_dir / "images" / f"{i}.png")
        frames.append({"file_path": f"images/{i}.png",
                       "transform_matrix": look_at_camera_to_world(np.array(eye), np.array([0.2, 0, 0])).tolist()})
    write_transforms(cap_dir, 32, 24, K, frames)
    return {"mesh_dir": mesh_dir, "scene": scene, "gaussians": gaussians, "robot_points": robot,
            "capture": Capture.load(cap_dir), "root": root}


@pytest.fixture(scope="session")
def synthetic_twin(twin_inputs, recipe):
    """The twin authored once for the module (~20 s: CoACD splits the SO-101's jaw colliders)."""
    from pipeline.workcell.build import official_robot_usd
    from pipeline.twin.author import author_twin, split_splat

    parts = split_splat(twin_inputs["gaussians"], twin_inputs["scene"], [twin_inputs["scene"]["parts"][1]], twin_inputs["robot_points"],
                        recipe.twin.object_splat_margin_m, recipe.twin.robot_splat_clearance_m)
    out = twin_inputs["root"] / "twin"
    path = author_twin(recipe, out, twin_inputs["scene"], twin_inputs["mesh_dir"], parts, twin_inputs["capture"],
                       official_robot_usd(), {"models/mesh/scene.json": "abc123"})
    return {"path": path, "parts": parts}


@pytest.fixture(scope="session")
def tiny_bc(small_recipe, recorded, workcell_xml, tmp_path_factory):
    """A lerobot ACT checkpoint trained for 6 steps on the two recorded demos (with its measured metrics)."""
    from pipeline.bc.stage import build_bc_policy

    tmp = tmp_path_factory.mktemp("bc")
    settings = {"steps": 6, "save_freq": 3, "log_freq": 1, "batch_size": 4, "held_out_episodes": 1,
                "eval_episodes": 2}
    recipe = small_recipe.model_copy(update={"bc": small_recipe.bc.model_copy(update=settings)})
    metrics = build_bc_policy(recipe, recorded, workcell_xml, tmp / "models" / "bc", tmp / "runs", device="cpu")
    return tmp / "models" / "bc", metrics
