"""HiZOO (Zhao et al., ICLR 2025, arXiv 2402.15173, "Second-Order Fine-Tuning without Pain for
LLMs: A Hessian Informed Zeroth-Order Optimizer"): ZO-SGD preconditioned by a diagonal Hessian
estimate that is itself built from the same forward passes.

State: Sigma^-1 = diag(h), a running estimate of the diagonal Hessian (h = 1 at the start),
one float32 tensor per trainable parameter (+4 bytes / parameter, like zo_sgd_momentum's
buffer). Per step, with u ~ N(0, I) drawn from the seed (the engine's z) and mu = `eps`:

    f0 = f(theta),  f+- = f(theta +- mu Sigma^1/2 u)                  (3 forwards, n = 1)
    Sigma_t^-1 = (1 - alpha) Sigma_{t-1}^-1
                 + alpha |f+ + f- - 2 f0| / (2 mu^2) diag(Sigma_{t-1}^-1/2 u u^T Sigma_{t-1}^-1/2)
    g = (f+ - f-) / (2 mu);   theta <- theta - lr (g Sigma_t^1/2 u + wd theta)

i.e. elementwise h <- (1 - alpha) h + alpha c h u^2 with c = |f+ + f- - 2 f0| / (2 mu^2), and
the step divides u by sqrt(h) of the *updated* estimate, while the two probes used the
previous one: the paper's update of Sigma^-1 and its step order, which the released trainer
(`zo_Hessian_step_update` in the top-level trainer.py) follows too (an earlier copy in
large_models/ stores Sigma instead but smooths it with the Sigma^-1 term). `alpha` is
`hessian_smooth` (the released scripts default to 1e-8, which leaves h ~ 1: MeZO plus one
forward). One extra forward a step over MeZO: the shared f0.

With `n_perts` > 1 (our generalisation; the paper uses one direction): every direction is
probed at the same theta and Sigma_{t-1}; the Hessian update averages c_k h u_k^2 over them and
the step averages g_k Sigma_t^1/2 u_k (2 n + 1 forwards). `perturbation=one_side` is refused:
the curvature needs the measured f(theta - mu Sigma^1/2 u).

The scaled directions go through the engine's virtual perturbation (`perturb.ExactDirections`)
with `exact=true`, so probes restore bit-exactly; the record keeps (seeds, g_k, c_k, lr) and
replay redoes the Hessian update and the step in order, so h and theta replay bit-exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch

from zoexp.perturb import ExactDirections, InPlaceDirections, PerturbationEngine
from zoexp.solvers.base import StepResult, check, engine_options, is_number
from zoexp.solvers.zo import ZOSolver


class HessianScaledDirections(InPlaceDirections):
    """Sigma^1/2 z(seed) = z / sqrt(h), with z the engine's direction and h the diagonal
    Hessian estimate (one float32 tensor per parameter, owned here)."""

    def __init__(self, params: Sequence[torch.Tensor], engine: PerturbationEngine) -> None:
        self.params, self.engine = list(params), engine
        self.hessian = [torch.ones(p.shape, dtype=torch.float32, device=p.device) for p in self.params]

    def raw(self, seed: int, index: int) -> torch.Tensor:
        """The unscaled direction u (float32)."""
        return self.engine.direction(seed, index)

    def direction(self, seed: int, index: int) -> torch.Tensor:
        return self.raw(seed, index).div_(self.hessian[index].sqrt())


class HiZOO(ZOSolver):
    placements = ("device",)
    placement_note = "its diagonal Hessian estimate is dense, 4 bytes per parameter"
    two_side_only = "the Hessian estimate needs |f+ + f- - 2 f0| with the measured f-"

    def __init__(self, hessian_smooth: float = 1e-8, dist: str = "gaussian", exact: bool = True,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.hessian_smooth", is_number(hessian_smooth) and 0 <= hessian_smooth < 1,
              hessian_smooth, "a number in [0, 1)")
        self.hessian_smooth = float(hessian_smooth)
        self.engine_options = engine_options(dist, exact, False)
        self.exact = exact
        self.scaled: HessianScaledDirections | None = None

    def make_directions(self) -> HessianScaledDirections | ExactDirections:
        engine = PerturbationEngine(self.params, **self.engine_options)
        self.scaled = HessianScaledDirections(self.params, engine)
        return ExactDirections(self.params, self.scaled) if self.exact else self.scaled

    def step(self, batch, step: int) -> StepResult:
        loss_zero, seeds, plus, minus = self.probe_pairs(batch, step, base=True)
        eps = self.eps
        grads = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
        curvatures = [abs(p + m - 2 * loss_zero) / (2 * eps**2) for p, m in zip(plus, minus)]
        record = {"seeds": seeds, "proj_grads": grads, "curvatures": curvatures, "lr": self.lr_at(step)}
        self.ensure_finite(step, loss_zero, grads, record)  # a diverged step never reaches the weights
        self.replay(record)
        return StepResult(loss=loss_zero, record=record, metrics={
            "proj_grad": sum(grads) / len(grads), "curvature": sum(curvatures) / len(curvatures),
            "lr": record["lr"]})

    @torch.no_grad()
    def replay(self, record: dict) -> None:
        seeds, lr, n = record["seeds"], record["lr"], len(record["seeds"])
        alpha, scaled = self.hessian_smooth, self.scaled
        if alpha:
            for i, h in enumerate(scaled.hessian):
                fresh = sum(c * scaled.raw(s, i).square_() for s, c in zip(seeds, record["curvatures"]))
                estimate = h * fresh  # with h_{t-1}: diag(Sigma^-1/2 u u^T Sigma^-1/2) = h u^2
                h.mul_(1 - alpha).add_(estimate, alpha=alpha / n)
        for k, (seed, g) in enumerate(zip(seeds, record["proj_grads"])):
            self.directions.update(seed, -lr * g / n, lr * self.weight_decay if k == 0 else 0.0)

    def state_dict(self) -> dict:
        return {"hessian": [h.cpu() for h in self.scaled.hessian]}

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip(self.scaled.hessian, state["hessian"]):
            mine.copy_(saved)
