"""Stage `rl_policy`: a residual on the frozen BC policy, trained with PPO in Isaac Lab on the USD twin (docs/rl.md).

Isaac Lab's task-folder convention: this package registers the gym id; the env config (`env_cfg.py`), the env
(`env.py`), the agent config (`agent_cfg.py`) and the batched BC base (`base_policy.py`) live apart; `stage.py` is
the stage entry (`build_rl_policy`, `python -m pipeline.rl.stage`). The entry points are strings, so registering
imports neither Isaac Lab nor torch.
"""

import gymnasium as gym

TASK_ID = "Twinloop-TwinPickPlace-Residual-v0"

if TASK_ID not in gym.registry:
    gym.register(id=TASK_ID, entry_point="pipeline.rl.env:TwinPickPlaceEnv", disable_env_checker=True,
                 kwargs={"env_cfg_entry_point": "pipeline.rl.env:TwinPickPlaceEnvCfg",
                         "rsl_rl_cfg_entry_point": "pipeline.rl.agent_cfg:ResidualPPORunnerCfg"})
