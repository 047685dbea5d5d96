"""pipeline.common.multi_gpu through the stages' launchers (BC's accelerate, RL's torchrun): a recipe asking for
more GPUs than this machine has is refused before any work starts."""

import pytest


def test_multi_gpu_recipes_refused_without_the_gpus(tmp_path):
    """bc.gpus / rl.gpus > 1 on a machine without that many CUDA devices: a clear error before any work starts."""
    import torch

    from pipeline.bc.stage import BcRun, launch_data_parallel
    from pipeline.rl.env_cfg import RlError
    from pipeline.rl.stage import launch_distributed

    have = torch.cuda.device_count()
    run = BcRun(recipe={}, demos_root="", workcell_xml="", work_dir=str(tmp_path), out_dir=str(tmp_path / "out"),
                device="auto", train_episodes=[0], held_out_episodes=[1])
    with pytest.raises(RuntimeError, match=f"bc.gpus is {have + 1}, but torch sees {have} CUDA device"):
        launch_data_parallel(run, have + 1, "cuda" if have else "cpu")
    with pytest.raises(RlError, match=f"rl.gpus is {have + 1}"):
        launch_distributed(have + 1, [], "cuda" if have else "cpu")
    assert not (tmp_path / "out").exists()
