"""What the seed-based zeroth-order solvers share: finite-difference probes over seeded
directions, the averaged n-direction update, and its replay from (seeds, coefficients).

A *directions* object is anything with the PerturbationEngine verbs (`perturb`, `move`,
`restore`, `update`, `direction`): the engine itself for Gaussian / Rademacher z, or the
low-rank SubZero / LOZO directions, the masked Sparse-MeZO ones, HiZOO's Hessian-scaled ones.
A solver never stores z; it keeps seeds and scalars only.

`solver.perturbation` picks the difference. `two_side` (default): f+ = f(theta + eps z) and
f- = f(theta - eps z), g = (f+ - f-) / (2 eps), 2 n forwards. `one_side`: f0 = f(theta) once per
step, shared by every direction, and f+ per direction, g = (f+ - f0) / eps, 1 + n forwards.
`probe_pairs` reports the one-sided case in the two-sided form, with 2 f0 - f+ (the
reflection of f+ through f0) in place of the unmeasured f-: (f+ - (2 f0 - f+)) / (2 eps) is
the one-sided g and (f+ + f-) / 2 is f0, so a solver written for central differences gets the
one-sided estimate by inheritance. Solvers that need the real f(theta - eps z) (1.5-SPSA's and
HiZOO's curvature) refuse `one_side` in their constructor. A step's record holds the
coefficients, so replay is the same for both.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from zoexp.batched_probes import ProbeChoice
from zoexp.distributed import Ranks
from zoexp.probes import Probe, ProbeStrategy, central_pairs
from zoexp.solvers.base import Solver, StepResult, check, check_perturbation, is_number


class Directions(Protocol):
    def perturb(self, seed: int, scale: float) -> None: ...
    def move(self, seed: int, old_scale: float, new_scale: float) -> None: ...
    def restore(self, seed: int, scale: float) -> None: ...
    def restore_update_perturb(self, seed: int, scale: float, coef: float, decay: float = 0.0,
                               next_seed: int | None = None, next_scale: float = 0.0) -> None: ...
    def update(self, seed: int, coef: float, decay: float = 0.0) -> None: ...
    def direction(self, seed: int, index: int) -> torch.Tensor: ...


class ZOSolver(ProbeChoice, Solver):
    """n-SPSA over `self.directions` (built by `make_directions` once the parameters exist).

    Per step, for k = 1..n_perts with seed s_k: f+ = f(theta + eps z_k), f- = f(theta - eps z_k),
    g_k = (f+ - f-) / (2 eps); theta <- (1 - lr wd) theta - lr / n * sum_k g_k z_k.
    All directions are probed at the same theta and on the same batch (2 n forwards; one-sided,
    g_k = (f+ - f(theta)) / eps in 1 + n forwards: module doc), one after another or as row
    groups of batched forwards (`solver.batched_probes`, `zoexp.batched_probes`).
    """

    placements = ("device", "offload", "fsdp")
    # Why a subclass needs the measured f(theta - eps z) (then it refuses `one_side`), or None.
    two_side_only: str | None = None

    def __init__(self, eps: float = 1e-3, n_perts: int = 1, perturbation: str = "two_side",
                 batched_probes="auto", probe_chunk="auto", peft_target: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.init_probe_choice(batched_probes, probe_chunk, peft_target)
        check("solver.eps", is_number(eps) and eps > 0, eps, "a number > 0")
        check("solver.n_perts", isinstance(n_perts, int) and not isinstance(n_perts, bool) and n_perts >= 1,
              n_perts, "an integer >= 1")
        self.perturbation = check_perturbation(perturbation, self.two_side_only)
        self.eps, self.n_perts = float(eps), n_perts
        self.directions: Directions | None = None
        self.probes: ProbeStrategy | None = None
        self.exact = True  # perturbations restore bit-exactly (subclasses set it from their YAML)

    def setup(self, params, objective, train_examples=()) -> None:
        """The directions and the probe strategy; a placement that streams or shards the
        model wraps the first (deferred / shard-local updates) and decides the second
        (layer-major probes), so a subclass gets offload and sharding without a line."""
        super().setup(params, objective, train_examples)
        self.directions = self.placement.directions(self.make_directions())
        self.probes = self.placement.probes(self.directions, self.objective) or self.make_probes()

    def make_directions(self) -> Directions:
        raise NotImplementedError

    def make_probes(self) -> ProbeStrategy:
        """How this solver's probes are evaluated (`zoexp.probes`): sequential, or as row
        groups of batched forwards (`solver.batched_probes`, `zoexp.batched_probes`)."""
        return self.choose_probes(self.directions)

    def settle(self) -> None:
        self.placement.settle()

    def distribute(self, ranks: Ranks) -> None:
        """Deal the n directions of each step to the ranks (`zoexp.distributed`)."""
        if ranks.world > 1:
            check("solver.n_perts", self.n_perts >= ranks.world, self.n_perts,
                  f"an integer >= {ranks.world} (the number of processes)")
            check("solver.exact", self.exact, self.exact,
                  "true when several processes share a run (in-place sweeps drift apart per rank)")
        self.ranks = ranks

    # ---- probes ----------------------------------------------------------------------------
    def seeds(self, step: int) -> list[int]:
        return [self.direction_seed(step, k) for k in range(self.n_perts)]

    @property
    def one_sided(self) -> bool:
        return self.perturbation == "one_side"

    def probe_all(self, batch, step: int) -> tuple[list[int], list[float], list[float]]:
        """(seeds, f(theta + eps z_k), f(theta - eps z_k)) on `batch`; theta restored afterwards
        (one-sided: 2 f(theta) - f(theta + eps z_k) in place of the second, module doc)."""
        _, seeds, plus, minus = self.probe_pairs(batch, step)
        return seeds, plus, minus

    def probe_pairs(self, batch, step: int, base: bool = False
                    ) -> tuple[float | None, list[int], list[float], list[float]]:
        """(f(theta) if `base` or one-sided else None, seeds, f(theta + eps z_k), f(theta - eps z_k)).

        The losses come from the probe strategy (`zoexp.probes`: sequential by default, where
        direction k's restore and k+1's perturbation are one sweep). With several processes
        each probes its share of the directions (every process evaluates f(theta)) and the
        losses are summed into one table (`zoexp.distributed`). One-sided, f(theta) is probed
        once and the second column is its reflection 2 f(theta) - f+ (module doc)."""
        seeds = self.seeds(step)
        mine = self.ranks.share(len(seeds))
        base = base or self.one_sided
        if self.one_sided:
            probes = [Probe()] + [Probe(seeds[k], self.eps) for k in mine]
        else:
            probes = ([Probe()] if base else []) + central_pairs([seeds[k] for k in mine], self.eps)
        losses = self.probes.losses(batch, probes)
        f0 = losses.pop(0) if base else None
        per_direction = 1 if self.one_sided else 2
        table = torch.zeros(len(seeds), 2, dtype=torch.float64)
        for i, k in enumerate(mine):
            table[k, :per_direction] = torch.tensor(losses[per_direction * i: per_direction * (i + 1)],
                                                    dtype=torch.float64)
        table = self.ranks.combine(table)
        plus = table[:, 0].tolist()
        minus = [2 * f0 - p for p in plus] if self.one_sided else table[:, 1].tolist()
        return f0, seeds, plus, minus

    # ---- update --------------------------------------------------------------------------------
    def apply(self, seeds: Sequence[int], coefs: Sequence[float], decay: float) -> None:
        """theta <- (1 - decay) theta + sum_k coefs[k] z(seeds[k]) (decay applied once).

        One update sweep per direction: a fused multi-seed update is a kernel to write."""
        for k, (seed, coef) in enumerate(zip(seeds, coefs)):
            self.directions.update(seed, coef, decay if k == 0 else 0.0)

    def step(self, batch, step: int) -> StepResult:
        seeds, plus, minus = self.probe_all(batch, step)
        grads = [(p - m) / (2 * self.eps) for p, m in zip(plus, minus)]
        return self.finish(step, seeds, grads, loss=sum(plus + minus) / (2 * len(seeds)))

    def finish(self, step: int, seeds: list[int], grads: list[float], loss: float,
               metrics: dict | None = None) -> StepResult:
        """Apply the update through `replay`, so a recorded step and its replay are one code path
        (after `ensure_finite`: a diverged step never reaches the weights)."""
        record = self.make_record(step, seeds, grads)
        self.ensure_finite(step, loss, grads, record)
        self.replay(record)
        return StepResult(loss=loss, record=record, metrics={
            "proj_grad": sum(grads) / len(grads), "lr": self.lr_at(step), **(metrics or {})})

    def make_record(self, step: int, seeds: list[int], grads: list[float]) -> dict:
        """Seeds and the scalar coefficient of each z: all that the SGD update needs."""
        lr = self.lr_at(step)
        return {"seeds": seeds, "coefs": [-lr * g / len(seeds) for g in grads],
                "decay": lr * self.weight_decay}

    def replay(self, record: dict) -> None:
        self.apply(record["seeds"], record["coefs"], record["decay"])


def dense_estimate(directions: Directions, seeds: Sequence[int], weights: Sequence[float],
                   index: int) -> torch.Tensor:
    """sum_k weights[k] z(seeds[k]) for parameter `index`, as a float32 tensor.

    For the adaptive solvers, whose moments need the estimate itself; it allocates one
    tensor the size of that parameter (a fused per-parameter kernel would not)."""
    out = None
    for seed, w in zip(seeds, weights):
        z = directions.direction(seed, index)
        out = z.mul_(w) if out is None else out.add_(z, alpha=w)
    return out
