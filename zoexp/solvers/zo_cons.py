"""ZO-SGD-Cons (ZO-Bench: Zhang et al., ICML 2024, arXiv 2402.11592; the conservative ZO step
of Kim et al., 2021, "Curvature-aware derivative-free optimization"): ZO-SGD that takes a step
only where the loss on the step's batch says it helps.

Per step, one direction z from the seed (the benchmark's method has one query, q = 1):

    f0 = f(theta);  g = (f(theta + eps z) - f(theta - eps z)) / (2 eps)
    theta <- argmin over {theta - lr g z, theta, theta + lr g z} of f(.) on the same batch

The three losses compared are f0 and two more forwards at the candidates, so a step costs
5 forwards (1 + 2 + 2), or 4 with `perturbation=one_side` (g = (f(theta + eps z) - f0) / eps
reuses f0). Ties go as in the benchmark's trainer (`zo_conserv_step`): theta - lr g z is kept
unless it is worse than f0 (then theta, unless theta + lr g z is at least as good) or worse than
theta + lr g z (then that one); theta + lr g z wins ties with theta - lr g z.

The candidates are probes like any other (`Probe(seed, -+lr g)`, through the probe strategy
and the engine's virtual perturbation), so a rejected candidate is never written: only the
chosen step is applied, as the update `coef z`. The record is the n-SPSA record with that
coefficient (0 when theta is kept) plus `move` (-1, 0, +1 for the three candidates), and
replay applies it bit-exactly.

Restrictions, checked before the model loads: `n_perts = 1` (a candidate is one seeded
direction; averaging several directions is not the benchmark's method), `weight_decay = 0`
(the candidates are compared without decay), one process.
"""

from __future__ import annotations

from zoexp.distributed import Ranks
from zoexp.errors import ConfigError
from zoexp.probes import Probe
from zoexp.solvers.base import StepResult, check
from zoexp.solvers.spsa import SPSA


def conservative_move(loss_zero: float, loss_down: float, loss_up: float) -> int:
    """-1 (theta - lr g z), 0 (theta) or +1 (theta + lr g z): the benchmark's choice."""
    if loss_down > loss_zero:
        return 0 if loss_zero < loss_up else 1
    return -1 if loss_down < loss_up else 1


class ZOCons(SPSA):
    placements = ("device", "offload")  # one process: no fsdp
    placement_note = "it runs in one process"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.n_perts", self.n_perts == 1, self.n_perts,
              "1 (the conservative step compares candidates along one direction)")
        check("solver.weight_decay", self.weight_decay == 0, self.weight_decay,
              "0 (the candidates theta -+ lr g z are compared without decay)")

    def distribute(self, ranks: Ranks) -> None:
        if ranks.world > 1:
            raise ConfigError("processes", f"got {ranks.world}; zo_cons probes one direction a step; "
                              "allowed: 1")
        self.ranks = ranks

    def step(self, batch, step: int) -> StepResult:
        loss_zero, seeds, plus, minus = self.probe_pairs(batch, step, base=True)
        seed, lr = seeds[0], self.lr_at(step)
        grad = (plus[0] - minus[0]) / (2 * self.eps)
        self.ensure_finite(step, loss_zero, [grad])  # before probing theta -+ lr g z, and the update
        loss_down, loss_up = self.probes.losses(batch, [Probe(seed, -lr * grad), Probe(seed, lr * grad)])
        move = conservative_move(loss_zero, loss_down, loss_up)
        record = {"seeds": [seed], "coefs": [move * lr * grad], "decay": 0.0, "move": move}
        self.replay(record)
        return StepResult(loss=loss_zero, record=record, metrics={
            "proj_grad": grad, "lr": lr, "move": move,
            "loss_after": (loss_down, loss_zero, loss_up)[move + 1]})
