"""The same workcell on Newton + MJWarp (the CUDA path), run here on Warp's CPU backend with two worlds."""

import numpy as np
import pytest


@pytest.mark.slow
def test_newton_model_of_the_workcell_settles_in_every_world(recipe):
    import newton
    import warp as wp

    from pipeline.workcell.build import build_newton_model

    cfg = recipe.workcell
    model = build_newton_model(cfg, device="cpu", worlds=2)
    assert model.world_count == 2
    solver = newton.solvers.SolverMuJoCo(model, njmax=300, nconmax=150)
    s0, s1, control = model.state(), model.state(), model.control()
    newton.eval_fk(model, model.joint_q, model.joint_qd, s0)
    dt = 1.0 / (cfg.fps * cfg.physics_substeps)
    for _ in range(120):  # 0.25 s
        solver.step(s0, s1, control, None, dt)
        s0, s1 = s1, s0
    wp.synchronize()
    body_q = s0.body_q.numpy().reshape(2, -1, 7)
    cube_z = body_q[:, -1, 2]
    np.testing.assert_allclose(cube_z, cfg.cube.size / 2, atol=0.002)  # on the table, < 2 mm penetration
    joint_q = s0.joint_q.numpy().reshape(2, -1)[:, :6]
    assert np.all(np.isfinite(joint_q))
