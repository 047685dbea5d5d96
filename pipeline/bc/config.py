"""The `bc` section of params.yaml: the behaviour-cloning policy lerobot trains."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.common.sections import Section, Positive, PolicyOption

class BcConfig(Section):
    """Behaviour cloning with lerobot's trainer (`lerobot-train` arguments are built from these; see pipeline.bc.stage)."""

    policy: Literal["act", "diffusion", "smolvla"] = "act"
    pretrained_path: str = ""  # fine-tune a local lerobot checkpoint (smolvla needs its weights here: no Hub access)
    # What the policy sees. The default is the sim baseline: joints + the cube pose the simulator knows; add
    # observation.images.front / .wrist to learn from pixels (real recordings have no environment_state).
    observations: tuple[str, ...] = ("observation.state", "observation.environment_state")
    # Per policy type, lerobot policy-config fields passed as --policy.<key>=<value> (lerobot validates them); only
    # the entry of `policy` is used. ACT is sized to train on 2 CPU cores in minutes: no VAE (scripted demos are
    # unimodal; the VAE encoder triples the step cost), a 2-layer encoder, 20-step chunks blended by temporal
    # ensembling (a new chunk every step, as the ACT paper runs it: measured 97 % vs 73 % closed-loop success for
    # the same weights executed 10 steps per chunk). lerobot's presets leave ENV features unnormalized: the cube's
    # ±8 cm would vanish next to standardized joints, so ENV is normalized like STATE. No ImageNet download: a
    # vision backbone starts from scratch unless `pretrained_path` names a local checkpoint.
    policy_options: dict[str, dict[str, PolicyOption]] = {
        "act": {"chunk_size": 20, "n_action_steps": 1, "temporal_ensemble_coeff": 0.01, "use_vae": False,
                "dim_model": 128, "dim_feedforward": 512, "n_encoder_layers": 2, "pretrained_backbone_weights": None,
                "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ENV": "MEAN_STD",
                                          "ACTION": "MEAN_STD"}},
        "diffusion": {"horizon": 16, "n_action_steps": 8, "drop_n_last_frames": 7, "down_dims": [128, 256],
                      "pretrained_backbone_weights": None, "use_group_norm": True,
                      "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ENV": "MIN_MAX",
                                                "ACTION": "MIN_MAX"}},
        "smolvla": {},
    }
    # AdamW with a cosine decay from `lr` to `lr_final` over `steps` (after `warmup_steps`): the last checkpoint is
    # the settled one (a constant rate left checkpoints 1000 steps apart between 20 % and 73 % success).
    lr: Positive = 3e-4
    lr_final: Positive = 1e-5
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip_norm: Positive = 10.0
    steps: Annotated[int, Field(ge=1)] = 6000
    batch_size: Annotated[int, Field(ge=1)] = 32  # per GPU: with `gpus` > 1 the effective batch is batch_size x gpus
    # GPUs for training: > 1 runs lerobot's multi-GPU path (`accelerate launch --multi_gpu`, data parallel, one
    # process per GPU) and needs that many CUDA devices; a cluster profile requests them for the step's pod.
    gpus: Annotated[int, Field(ge=1)] = 1
    num_workers: Annotated[int, Field(ge=0)] = 0  # data-loader processes; 0 suits tabular features on few cores
    seed: int = 0
    log_freq: Annotated[int, Field(ge=1)] = 100
    save_freq: Annotated[int, Field(ge=1)] = 1000  # checkpoint period: the most steps an interruption can lose
    held_out_episodes: Annotated[int, Field(ge=1)] = 2  # the last N demo episodes: never trained on, scored offline
    eval_episodes: Annotated[int, Field(ge=1)] = 50  # closed-loop sim episodes (K) behind the success rate
    eval_seed: int = 1_000_000  # first cube-pose seed of the closed-loop episodes (demos use 0..)
    min_action_magnitude_ratio: Annotated[float, Field(ge=0)] = 0.3  # below: the "twitching" warning

    @model_validator(mode="after")
    def _runnable_here(self):
        if self.policy == "smolvla" and not self.pretrained_path:
            raise ValueError("smolvla fine-tunes pretrained weights, which cannot be downloaded here: set "
                             "pretrained_path to a local smolvla checkpoint folder")
        return self

    def training_fingerprint(self) -> str:
        """md5 of what shapes the checkpoint. `steps` and the evaluation fields are left out: raising `steps`
        resumes the last checkpoint (long training continues), re-evaluating never retrains."""
        skip = {"steps", "eval_episodes", "eval_seed", "min_action_magnitude_ratio", "log_freq"}
        return self.md5(exclude=skip)
