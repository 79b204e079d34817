"""ZO-Adam: Adam's moments on the n-SPSA estimate g_hat = 1/n sum_k g_k z_k.

m <- b1 m + (1 - b1) g_hat; v <- b2 v + (1 - b2) g_hat^2;
theta <- (1 - lr wd) theta - lr * m_hat / (sqrt(v_hat) + adam_eps), bias-corrected at step t.
m and v are two float32 tensors per trainable parameter (8 bytes / parameter): with fp32
weights ZO-Adam holds 3x the weights' memory, where ZO-SGD holds 1x.
"""

from __future__ import annotations

import torch

from zoexp.solvers.base import check
from zoexp.solvers.spsa import SPSA
from zoexp.solvers.zo import dense_estimate


class ZOAdam(SPSA):
    placements = ("device",)  # the update reads and writes a dense state of the model's size
    placement_note = "its moments m and v are dense, 8 bytes per parameter: it does not stream or shard"

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, adam_eps: float = 1e-8,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            check(f"solver.{name}", isinstance(value, (int, float)) and 0 <= value < 1, value,
                  "a number in [0, 1)")
        check("solver.adam_eps", isinstance(adam_eps, (int, float)) and adam_eps > 0, adam_eps,
              "a number > 0")
        self.beta1, self.beta2, self.adam_eps = float(beta1), float(beta2), float(adam_eps)
        self.t = 0
        self.m: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def setup(self, params, objective, train_examples=()) -> None:
        super().setup(params, objective, train_examples)
        self.m = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.v = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]

    def make_record(self, step: int, seeds: list[int], grads: list[float]) -> dict:
        return {"seeds": seeds, "proj_grads": grads, "lr": self.lr_at(step), "t": self.t + 1}

    @torch.no_grad()
    def replay(self, record: dict) -> None:
        seeds, lr, t = record["seeds"], record["lr"], record["t"]
        weights = [g / len(seeds) for g in record["proj_grads"]]
        b1, b2 = self.beta1, self.beta2
        for i, (p, m, v) in enumerate(zip(self.params, self.m, self.v)):
            est = dense_estimate(self.directions, seeds, weights, i)
            m.mul_(b1).add_(est, alpha=1 - b1)
            v.mul_(b2).addcmul_(est, est, value=1 - b2)
            denom = (v / (1 - b2**t)).sqrt_().add_(self.adam_eps)
            if self.weight_decay:
                p.mul_(1.0 - lr * self.weight_decay)
            p.addcdiv_((m / (1 - b1**t)).to(p.dtype), denom.to(p.dtype), value=-lr)
        self.t = t

    def state_dict(self) -> dict:
        return {"t": self.t, "m": [x.cpu() for x in self.m], "v": [x.cpu() for x in self.v]}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        for mine, saved in zip(self.m + self.v, state["m"] + state["v"]):
            mine.copy_(saved)
