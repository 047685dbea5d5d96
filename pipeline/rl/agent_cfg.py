"""The residual's learner: rsl_rl PPO, asymmetric actor-critic (Isaac Lab keeps the agent config apart from the env's).

The actor reads the `policy` observation group only (what the real robot has); the critic also reads `critic`
(privileged simulator state), which exists in training only.
"""

from __future__ import annotations

from isaaclab.utils import configclass
from isaaclab_rl.rsl_rl import RslRlMLPModelCfg, RslRlOnPolicyRunnerCfg, RslRlPpoAlgorithmCfg

from pipeline.rl.config import RlConfig


@configclass
class ResidualPPORunnerCfg(RslRlOnPolicyRunnerCfg):
    num_steps_per_env = 24
    max_iterations = 30
    save_interval = 10
    experiment_name = "twin_residual"
    empirical_normalization = False
    obs_groups = {"actor": ["policy"], "critic": ["critic"]}
    actor = RslRlMLPModelCfg(hidden_dims=[128, 128], activation="elu", obs_normalization=True,
                             distribution_cfg=RslRlMLPModelCfg.GaussianDistributionCfg(init_std=0.3))
    critic = RslRlMLPModelCfg(hidden_dims=[256, 256], activation="elu", obs_normalization=True)
    algorithm = RslRlPpoAlgorithmCfg(
        value_loss_coef=1.0, use_clipped_value_loss=True, clip_param=0.2, entropy_coef=0.002, num_learning_epochs=5,
        num_mini_batches=4, learning_rate=3e-4, schedule="adaptive", gamma=0.99, lam=0.95, desired_kl=0.01,
        max_grad_norm=1.0)


def make_agent_cfg(cfg: RlConfig, device: str) -> ResidualPPORunnerCfg:
    agent = ResidualPPORunnerCfg()
    agent.device = device
    agent.seed = cfg.seed
    agent.num_steps_per_env = cfg.steps_per_env
    agent.max_iterations = cfg.iterations
    agent.save_interval = cfg.save_every
    agent.clip_actions = cfg.residual_clip
    agent.actor.hidden_dims = list(cfg.actor_hidden)
    agent.critic.hidden_dims = list(cfg.critic_hidden)
    agent.actor.distribution_cfg.init_std = cfg.init_noise_std
    agent.algorithm.learning_rate = cfg.learning_rate
    return agent
