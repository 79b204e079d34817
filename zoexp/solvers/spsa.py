"""n-SPSA: the MeZO estimate averaged over `n_perts` independent seeded directions.

Same batch, same theta for every direction (2 n forwards per step); averaging n directions
divides the estimate's variance by n at n times the forward passes.
"""

from __future__ import annotations

from zoexp.perturb import PerturbationEngine
from zoexp.solvers.base import engine_options
from zoexp.solvers.zo import ZOSolver


class SPSA(ZOSolver):
    def __init__(self, dist: str = "gaussian", exact: bool = True, stochastic_rounding: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.engine_options = engine_options(dist, exact, stochastic_rounding)
        self.exact = exact

    def make_directions(self) -> PerturbationEngine:
        return PerturbationEngine(self.params, **self.engine_options)
