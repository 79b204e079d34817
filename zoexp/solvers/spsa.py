"""n-SPSA: the MeZO estimate averaged over `n_perts` independent seeded directions.

Same batch, same theta for every direction (2 n forwards per step); averaging n directions
divides the estimate's variance by n at n times the forward passes.
"""

from __future__ import annotations

from zoexp.perturb import DISTS, PerturbationEngine
from zoexp.solvers.base import check
from zoexp.solvers.zo import ZOSolver


class SPSA(ZOSolver):
    def __init__(self, dist: str = "gaussian", **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.dist", dist in DISTS, dist, str(list(DISTS)))
        self.dist = dist

    def make_directions(self) -> PerturbationEngine:
        return PerturbationEngine(self.params, dist=self.dist)
