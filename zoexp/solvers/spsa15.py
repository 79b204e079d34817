"""1.5-SPSA: n-SPSA with each direction's step divided by a saturated curvature estimate.

Per step, f0 = f(theta) once, then per direction f+ = f(theta + eps z), f- = f(theta - eps z)
(2 n + 1 forwards). The second difference gives the curvature along z,
c = |f+ - 2 f0 + f-| / eps^2 (= z^T H z for a quadratic), saturated as
c <- max(c ** saturating_alpha, lambda_reg); g = (f+ - f-) / (2 eps c) z, averaged over the
directions, and theta <- theta - lr * g.

1.5-SPSA already evaluates f(theta); `perturbation=one_side` is refused, because the
curvature needs the measured f(theta - eps z) (a one-sided variant would be another method).
"""

from __future__ import annotations

from zoexp.solvers.base import StepResult, check
from zoexp.solvers.spsa import SPSA


def curvature(loss_plus: float, loss_minus: float, loss_zero: float, eps: float) -> float:
    """|f+ - 2 f0 + f-| / eps^2: the second directional derivative along z."""
    return abs(loss_plus - 2 * loss_zero + loss_minus) / eps**2


class SPSA15(SPSA):
    two_side_only = "the curvature |f+ - 2 f0 + f-| / eps^2 needs the measured f(theta - eps z)"

    def __init__(self, saturating_alpha: float = 0.1, lambda_reg: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.saturating_alpha", isinstance(saturating_alpha, (int, float))
              and 0 < saturating_alpha <= 1, saturating_alpha, "a number in (0, 1]")
        check("solver.lambda_reg", isinstance(lambda_reg, (int, float)) and lambda_reg > 0,
              lambda_reg, "a number > 0")
        self.saturating_alpha, self.lambda_reg = float(saturating_alpha), float(lambda_reg)

    def saturate(self, c: float) -> float:
        return max(c**self.saturating_alpha, self.lambda_reg)

    def step(self, batch, step: int) -> StepResult:
        loss_zero, seeds, plus, minus = self.probe_pairs(batch, step, base=True)
        curv = [curvature(p, m, loss_zero, self.eps) for p, m in zip(plus, minus)]
        grads = [(p - m) / (2 * self.eps * self.saturate(c)) for p, m, c in zip(plus, minus, curv)]
        return self.finish(step, seeds, grads, loss=loss_zero,
                           metrics={"curvature": sum(curv) / len(curv)})
