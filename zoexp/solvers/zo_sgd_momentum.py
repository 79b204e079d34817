"""ZO-SGD with heavy-ball momentum on the n-SPSA estimate.

buf <- momentum * buf + g_hat; theta <- (1 - lr wd) theta - lr * buf, where
g_hat = 1/n sum_k g_k z_k is rebuilt from the seeds. The buffer is one float32 tensor per
trainable parameter (4 bytes / parameter): the memory ZO otherwise avoids.
"""

from __future__ import annotations

import torch

from zoexp.solvers.base import check
from zoexp.solvers.spsa import SPSA
from zoexp.solvers.zo import dense_estimate


class ZOSGDMomentum(SPSA):
    placements = ("device",)  # the update reads and writes a dense state of the model's size
    placement_note = "its momentum buffer is dense, 4 bytes per parameter: it does not stream or shard"

    def __init__(self, momentum: float = 0.9, **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.momentum", isinstance(momentum, (int, float)) and 0 <= momentum < 1, momentum,
              "a number in [0, 1)")
        self.momentum = float(momentum)
        self.buffers: list[torch.Tensor] = []

    def setup(self, params, objective, train_examples=()) -> None:
        super().setup(params, objective, train_examples)
        self.buffers = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]

    def make_record(self, step: int, seeds: list[int], grads: list[float]) -> dict:
        return {"seeds": seeds, "proj_grads": grads, "lr": self.lr_at(step)}

    @torch.no_grad()
    def replay(self, record: dict) -> None:
        seeds, lr = record["seeds"], record["lr"]
        weights = [g / len(seeds) for g in record["proj_grads"]]
        for i, (p, buf) in enumerate(zip(self.params, self.buffers)):
            buf.mul_(self.momentum).add_(dense_estimate(self.directions, seeds, weights, i))
            if self.weight_decay:
                p.mul_(1.0 - lr * self.weight_decay)
            p.add_(buf.to(p.dtype), alpha=-lr)

    def state_dict(self) -> dict:
        return {"buffers": [b.cpu() for b in self.buffers]}

    def load_state_dict(self, state: dict) -> None:
        for buf, saved in zip(self.buffers, state["buffers"]):
            buf.copy_(saved)
