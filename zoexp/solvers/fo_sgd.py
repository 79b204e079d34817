"""First-order baselines: ordinary backprop fine-tuning through the same loop.

One forward + backward per step on `objective.loss_tensor` (counted as one forward pass; a
backward costs about two more). They exist for the accuracy and memory comparison with ZO,
so they refuse non-differentiable objectives. The model stays in eval mode (no dropout),
like the ZO solvers, so both see the same function.
"""

from __future__ import annotations

import torch

from zoexp.errors import ConfigError
from zoexp.objectives import OBJECTIVES
from zoexp.solvers.base import Solver, StepResult, check

DIFFERENTIABLE = ["auto", *(name for name, cls in OBJECTIVES.items() if cls.differentiable)]


class FirstOrder(Solver):
    """Base: `make_optimizer` picks the torch optimizer; the lr schedule sets its lr each step."""

    graphable_steps = False  # backprop: the step's forward is not replayed from a CUDA graph

    def __init__(self, objective: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        if objective in OBJECTIVES and not OBJECTIVES[objective].differentiable:
            raise ConfigError("objective", f"got {objective!r}; allowed for first-order solvers: "
                              f"{DIFFERENTIABLE} (a differentiable loss)")
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, params, objective, train_examples=()) -> None:
        if not objective.differentiable:
            raise ConfigError("objective", f"got {objective.name!r}; allowed for first-order solvers: "
                              f"{DIFFERENTIABLE} (a differentiable loss)")
        super().setup(params, objective, train_examples)
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def step(self, batch, step: int) -> StepResult:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = self.objective.loss_tensor(batch)
            loss.backward()
        grad_norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in self.params if p.grad is not None))
        self.optimizer.step()
        return StepResult(loss=loss.item(), metrics={"grad_norm": grad_norm.item(), "lr": lr})

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class FOSGD(FirstOrder):
    def __init__(self, momentum: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.momentum", isinstance(momentum, (int, float)) and 0 <= momentum < 1, momentum,
              "a number in [0, 1)")
        self.momentum = float(momentum)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.params, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)
