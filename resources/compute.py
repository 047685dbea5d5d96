"""Which device heavy stages run on. Resolved lazily: loading the definitions never imports torch or CUDA."""


from typing import Literal

import dagster as dg


class ComputeDevice(dg.ConfigurableResource):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: int = 1

    def resolve(self) -> str:
        """'cuda' when asked for (error if absent) or when `auto` finds a GPU, else 'cpu'."""
        if self.device == "cpu":
            return "cpu"
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if self.device == "cuda":
            raise RuntimeError("compute.device is 'cuda' but torch finds no CUDA device on this machine")
        return "cpu"
