"""Zero-shot evaluation: no training step, same metrics, so "does training help" is one override."""

from zoexp.solvers.base import Solver


class ZeroShot(Solver):
    trains = False

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("steps", 0)
        super().__init__(**kwargs)
        if self.steps:
            from zoexp.errors import ConfigError

            raise ConfigError("solver.steps", f"got {self.steps}; allowed: 0 (zeroshot does not train)")
