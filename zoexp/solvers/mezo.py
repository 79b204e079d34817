"""MeZO (Malladi et al., 2023): ZO-SGD with the in-place seed trick.

Per step: one seed s; L+ = f(theta + eps z), L- = f(theta - eps z), projected gradient
g = (L+ - L-) / (2 eps); theta <- theta - lr (g z + wd theta), z regenerated from s.
Two forward passes, and no tensor the size of the parameters is ever allocated.
"""

from __future__ import annotations

from zoexp.perturb import PerturbationEngine
from zoexp.solvers.base import Solver, StepResult, check, engine_options


class MeZO(Solver):
    def __init__(self, eps: float = 1e-3, dist: str = "gaussian", exact: bool = True,
                 stochastic_rounding: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.eps", isinstance(eps, (int, float)) and eps > 0, eps, "a number > 0")
        self.eps = float(eps)
        self.engine_options = engine_options(dist, exact, stochastic_rounding)
        self.engine: PerturbationEngine | None = None

    def setup(self, params, objective, train_examples=()) -> None:
        super().setup(params, objective, train_examples)
        self.engine = PerturbationEngine(self.params, **self.engine_options)

    def step(self, batch, step: int) -> StepResult:
        seed, eps, engine = self.direction_seed(step), self.eps, self.engine
        engine.perturb(seed, eps)
        loss_plus = self.objective.loss(batch)
        engine.move(seed, eps, -eps)
        loss_minus = self.objective.loss(batch)
        grad = (loss_plus - loss_minus) / (2 * eps)
        lr = self.lr_at(step)
        record = {"seed": seed, "coef": -lr * grad, "decay": lr * self.weight_decay}
        engine.restore_and_update(seed, -eps, record["coef"], record["decay"])
        return StepResult(loss=(loss_plus + loss_minus) / 2, metrics={"proj_grad": grad, "lr": lr},
                          record=record)

    def replay(self, record: dict) -> None:
        self.engine.update(record["seed"], record["coef"], record["decay"])
