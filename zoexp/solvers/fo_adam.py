"""First-order Adam(W) baseline: backprop fine-tuning (see fo_sgd.FirstOrder)."""

from __future__ import annotations

import torch

from zoexp.solvers.base import check
from zoexp.solvers.fo_sgd import FirstOrder


class FOAdam(FirstOrder):
    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, adam_eps: float = 1e-8, **kwargs) -> None:
        super().__init__(**kwargs)
        for name, value in (("beta1", beta1), ("beta2", beta2)):
            check(f"solver.{name}", isinstance(value, (int, float)) and 0 <= value < 1, value,
                  "a number in [0, 1)")
        check("solver.adam_eps", isinstance(adam_eps, (int, float)) and adam_eps > 0, adam_eps, "a number > 0")
        self.betas, self.adam_eps = (float(beta1), float(beta2)), float(adam_eps)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.params, lr=self.lr, betas=self.betas, eps=self.adam_eps,
                                 weight_decay=self.weight_decay)
