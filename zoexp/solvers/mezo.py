"""MeZO (Malladi et al., 2023): ZO-SGD with the in-place seed trick.

Per step: one seed s; L+ = f(theta + eps z), L- = f(theta - eps z), projected gradient
g = (L+ - L-) / (2 eps); theta <- theta - lr (g z + wd theta), z regenerated from s.
Two forward passes, and no tensor the size of the parameters is ever allocated.
`perturbation=one_side`: L0 = f(theta) instead of L-, g = (L+ - L0) / eps (still two forwards).

The two losses come from the probe strategy (`zoexp.probes`), like every seeded solver's.
One case keeps a path of its own because it fuses across the update: in place
(`exact=False`) with sequential probes, a step ends with one sweep that restores, updates
*and* applies the next step's +eps perturbation, so the next step starts perturbed: two sweeps
per step instead of three, the same operations bit for bit. The loop calls `settle` before
anything else reads the weights (evaluation, checkpoint, the end of training).
"""

from __future__ import annotations

from zoexp.batched_probes import ProbeChoice
from zoexp.errors import Diverged
from zoexp.perturb import PerturbationEngine
from zoexp.probes import Probe, ProbeStrategy, SequentialProbes, central_pairs, queued_loss
from zoexp.solvers.base import Solver, StepResult, check, check_perturbation, engine_options, is_number


class MeZO(ProbeChoice, Solver):
    placements = ("device", "offload", "fsdp")

    def __init__(self, eps: float = 1e-3, dist: str = "gaussian", exact: bool = True,
                 stochastic_rounding: bool = False, perturbation: str = "two_side",
                 batched_probes="auto", probe_chunk="auto", peft_target: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.init_probe_choice(batched_probes, probe_chunk, peft_target)
        check("solver.eps", is_number(eps) and eps > 0, eps, "a number > 0")
        self.eps = float(eps)
        self.perturbation = check_perturbation(perturbation)
        self.engine_options = engine_options(dist, exact, stochastic_rounding)
        self.exact = exact
        self.engine: PerturbationEngine | None = None
        self.probes: ProbeStrategy | None = None
        self.carried: int | None = None  # seed whose +eps perturbation the weights hold now

    def setup(self, params, objective, train_examples=()) -> None:
        super().setup(params, objective, train_examples)
        self.engine = self.placement.directions(PerturbationEngine(self.params, **self.engine_options))
        self.probes = self.placement.probes(self.engine, self.objective) or self.make_probes()

    def make_probes(self) -> ProbeStrategy:
        """How the two probes of a step are evaluated (`zoexp.probes`)."""
        return self.choose_probes(self.engine)

    @property
    def carries(self) -> bool:
        """Whether steps fuse the next step's perturbation into their last in-place sweep."""
        return (not self.engine.exact and isinstance(self.probes, SequentialProbes)
                and self.perturbation == "two_side")

    def step(self, batch, step: int) -> StepResult:
        seed, eps = self.direction_seed(step), self.eps
        if self.perturbation == "one_side":
            loss_zero, loss_plus = self.probes.losses(batch, [Probe(), Probe(seed, eps)])
            return self._finish(step, seed, (loss_plus - loss_zero) / eps, loss_zero)
        if self.carries:
            loss_plus, loss_minus = self._carried_probes(batch, seed)
        else:
            loss_plus, loss_minus = self.probes.losses(batch, central_pairs([seed], eps))
        return self._finish(step, seed, (loss_plus - loss_minus) / (2 * eps), (loss_plus + loss_minus) / 2)

    def _finish(self, step: int, seed: int, grad: float, loss: float) -> StepResult:
        eps, lr = self.eps, self.lr_at(step)
        record = {"seed": seed, "coef": -lr * grad, "decay": lr * self.weight_decay}
        try:
            self.ensure_finite(step, loss, [grad], record)
        except Diverged:
            if self.carries:  # theta - eps z is applied: leave theta as it was, the step not applied
                self.engine.restore(seed, -eps)
            raise
        if not self.carries:
            self.replay(record)
        elif step + 1 >= self.steps:
            self.engine.restore_and_update(seed, -eps, record["coef"], record["decay"])
        else:  # in place: the next step's perturbation rides on this sweep
            self.carried = self.direction_seed(step + 1)
            self.engine.restore_update_perturb(seed, -eps, record["coef"], record["decay"],
                                               next_seed=self.carried, next_scale=eps)
        return StepResult(loss=loss, metrics={"proj_grad": grad, "lr": lr}, record=record)

    def _carried_probes(self, batch, seed: int) -> tuple[float, float]:
        """f(theta + eps z), f(theta - eps z), starting from the carried perturbation if the
        previous step left it on; leaves theta - eps z applied for the fused final sweep."""
        engine, eps = self.engine, self.eps
        if self.carried != seed:
            self.settle()
            engine.perturb(seed, eps)
        self.carried = None
        loss_plus = queued_loss(self.objective, batch)
        engine.move(seed, eps, -eps)
        loss_minus = queued_loss(self.objective, batch)
        return float(loss_plus), float(loss_minus)

    def settle(self) -> None:
        if self.carried is not None:
            self.engine.restore(self.carried, self.eps)
            self.carried = None
        self.placement.settle()

    def replay(self, record: dict) -> None:
        self.engine.update(record["seed"], record["coef"], record["decay"])
