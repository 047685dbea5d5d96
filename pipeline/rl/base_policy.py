"""The frozen BC policy as the base of residual RL: one lerobot checkpoint queried for a whole batch of envs.

lerobot's `select_action` keeps one temporal ensemble (or action queue) for the whole batch, which is only right
when every episode starts together. Here each env has its own ensemble, reset with its episode, computed exactly as
lerobot's `ACTTemporalEnsembler` does (tested against `select_action` one env at a time), so a zero residual
reproduces the BC policy a robot would run.
"""

from __future__ import annotations

from pathlib import Path

import torch


class BatchedBC:
    def __init__(self, checkpoint: Path, num_envs: int, device: str = "cpu", task: str = ""):
        from pipeline.bc.evaluate import LerobotPolicy

        self.bc = LerobotPolicy(Path(checkpoint), device)
        cfg = self.bc.policy.config
        images = [k for k in self.bc.input_keys if k.startswith("observation.images.")]
        if images:
            raise ValueError(f"the BC checkpoint reads camera images {images}: residual RL renders no twin cameras "
                             "yet; train bc_policy on bc.observations without images")
        self.input_keys = list(self.bc.input_keys)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.task = task
        self.chunk = int(cfg.chunk_size)
        coeff = getattr(cfg, "temporal_ensemble_coeff", None)
        self.ensemble = coeff is not None
        self.n_action_steps = int(getattr(cfg, "n_action_steps", 1))
        if self.ensemble:
            self.weights = torch.exp(-coeff * torch.arange(self.chunk, device=self.device))
            self.weights_cumsum = torch.cumsum(self.weights, 0)
        self._pending = None  # [N, C-1, A] ensembled actions of the steps ahead (or the queued chunk)
        self._count = None  # [N, C-1] how many predictions each pending step averages
        self._fresh = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._graph = None  # CUDA: the captured forward pass (False: capture failed, eager)

    def reset(self, env_ids=None) -> None:
        """Forget the pending actions of these envs (all when None): their episodes start over."""
        if env_ids is None:
            self._fresh[:] = True
        else:
            self._fresh[env_ids] = True

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        processed = self.bc.preprocessor({**batch, "task": [self.task] * self.num_envs})
        chunk = self.bc.policy.predict_action_chunk(processed)
        return self.bc.postprocessor(chunk).to(self.device)

    @torch.inference_mode()
    def chunk_for(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """The policy's action chunk [N, C, A] (so101 units) for a batch of observations. On CUDA the forward pass
        (lerobot's normalization, ACT, unnormalization) is replayed as one CUDA graph: at a thousand envs the eager
        pass is a few hundred tiny kernel launches, most of the step's time."""
        batch = {k: observation[k].to(self.device, torch.float32) for k in self.input_keys}
        if self.device.type == "cuda" and self._graph is None:
            self._capture(batch)
        if not self._graph:  # CPU, or capture failed
            return self._forward(batch)
        for k, v in batch.items():
            self._static_in[k].copy_(v)
        self._graph.replay()
        return self._static_out.clone()

    def _capture(self, batch: dict[str, torch.Tensor]) -> None:
        """Record the forward pass once (after warm-up on a side stream, as PyTorch requires); a pass that cannot be
        captured stays eager, with a warning."""
        import warnings

        self._static_in = {k: v.clone() for k, v in batch.items()}
        try:
            # tensors lerobot creates without a device (ACT's zero latent) are made on the GPU, not copied there
            with self.device:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self._forward(self._static_in)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._static_out = self._forward(self._static_in)
            self._graph = graph
        except RuntimeError as exc:  # e.g. a host-to-device copy or a sync inside a processor step
            warnings.warn(f"BC forward pass not capturable as a CUDA graph, running it eagerly: {exc}")
            self._graph = False

    @torch.inference_mode()
    def __call__(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        """The next action [N, A] (so101 units) of every env."""
        actions = self.chunk_for(observation)
        if self.ensemble:
            return self._ensemble(actions)
        return self._queue(actions)

    def _ensemble(self, actions: torch.Tensor) -> torch.Tensor:
        n, c, a = actions.shape
        ones = torch.ones(n, c, dtype=torch.long, device=actions.device)
        if self._pending is None:
            full, count = actions.clone(), ones
        else:
            prev = self._count  # the online update of lerobot's ACTTemporalEnsembler, per env
            upd = (self._pending * self.weights_cumsum[prev - 1][..., None]
                   + actions[:, :-1] * self.weights[prev][..., None]) / self.weights_cumsum[prev][..., None]
            full = torch.cat([upd, actions[:, -1:]], 1)
            count = torch.cat([torch.clamp(prev + 1, max=c), ones[:, :1]], 1)
            fresh = self._fresh[:, None]
            full = torch.where(fresh[..., None], actions, full)
            count = torch.where(fresh, ones, count)
        self._fresh[:] = False
        self._pending, self._count = full[:, 1:], count[:, 1:]
        return full[:, 0]

    def _queue(self, actions: torch.Tensor) -> torch.Tensor:
        """n_action_steps > 1 without ensembling: a new chunk when an env's queue runs out (per env)."""
        n = actions.shape[0]
        if self._pending is None:
            self._pending = actions[:, :self.n_action_steps].clone()
            self._count = torch.zeros(n, dtype=torch.long, device=actions.device)
        refill = self._fresh | (self._count >= self.n_action_steps)
        self._pending[refill] = actions[refill, :self.n_action_steps]
        self._count[refill] = 0
        out = self._pending[torch.arange(n), self._count]
        self._count += 1
        self._fresh[:] = False
        return out
