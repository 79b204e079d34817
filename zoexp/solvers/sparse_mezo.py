"""Sparse-MeZO (Liu et al., 2024, arXiv 2402.15751, "Sparse MeZO: Less Parameters for Better
Performance in Zeroth-Order LLM Fine-Tuning"): MeZO that perturbs and updates only the
small-magnitude weights of each layer.

Per trainable tensor ("layer") l a threshold h_l; the mask of a step is m = 1[|theta| <= h_l],
read from the step's unperturbed weights theta_t; with z from the seed (the engine's z):

    z_hat = m (.) z;   g = (f(theta + eps z_hat) - f(theta - eps z_hat)) / (2 eps)
    theta <- theta - lr (g z_hat + wd m (.) theta)

(n_perts directions share the step's mask and are averaged as in n-SPSA; 2 n forwards, 1 + n
with `perturbation=one_side`.) The paper's reason: the ZO estimate's noise hurts large weights
more than small ones, so the large ones are left alone.

Threshold: h_l is the k-th smallest |theta| of the layer with k = round((1 - sparsity) numel),
so a share 1 - `sparsity` of each layer is tuned (the paper's sparsity is the share left
frozen). `threshold: initial` computes h_l once, from the weights training starts from (the
paper's rule: one scalar per layer is all that is stored); `threshold: current` recomputes it
from theta_t at every step (a k-th-value per tensor per step). With `peft=lora`, B starts at
zero, so its initial threshold is 0: B gets its first step and is frozen after it (every entry
has moved off zero); `current` keeps tuning the smallest (1 - sparsity) of B.

No dense mask is stored: the paper's memory-efficient implementation recomputes the mask on
the fly, and so do we, from the stored weights -- which, under the virtual perturbation, are
theta_t during the whole step (probes never write them). That is why `exact=false` is refused:
in place, the stored weights are perturbed while probing, the mask read from them would move
with the perturbation, and a restore would not undo the perturbation exactly. Replay redoes the
masked update from (seeds, coefficients) on the replayed theta_t, so it is bit-exact.
"""

from __future__ import annotations

from typing import Sequence

import torch

from zoexp.perturb import ExactDirections, InPlaceDirections, PerturbationEngine, _alias
from zoexp.solvers.base import StepResult, check, engine_options, is_number
from zoexp.solvers.zo import ZOSolver

THRESHOLDS = ("initial", "current")


def magnitude_thresholds(params: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    """Per tensor, the k-th smallest |theta| with k = round((1 - sparsity) numel) (at least 1)."""
    out = []
    for p in params:
        flat = p.detach().abs().reshape(-1).float()
        k = min(flat.numel(), max(1, round((1.0 - sparsity) * flat.numel())))
        out.append(float(flat.kthvalue(k).values))
    return out


class MaskedDirections(InPlaceDirections):
    """m (.) z(seed), m = 1[|theta_i| <= h_i] read from the stored (unperturbed) weights."""

    def __init__(self, params: Sequence[torch.Tensor], engine: PerturbationEngine,
                 thresholds: list[float]) -> None:
        self.params, self.engine, self.thresholds = list(params), engine, thresholds
        self._raw = [_alias(p) for p in self.params]  # reads that never see a virtual perturbation

    def mask(self, index: int) -> torch.Tensor:
        if self._raw[index].data_ptr() != self.params[index].data_ptr():
            self._raw[index] = _alias(self.params[index])
        return self._raw[index].abs() <= self.thresholds[index]

    def direction(self, seed: int, index: int) -> torch.Tensor:
        return self.engine.direction(seed, index).mul_(self.mask(index))

    @torch.no_grad()
    def update_all(self, seeds: Sequence[int], coefs: Sequence[float], decay: float = 0.0) -> None:
        """theta <- theta + sum_k coefs[k] m (.) z_k - decay m (.) theta, with the mask of the
        weights before this update (every direction of a step shares it)."""
        for i, p in enumerate(self.params):
            m = self.mask(i)
            step = None
            for seed, coef in zip(seeds, coefs):
                z = self.engine.direction(seed, i)
                step = z.mul_(coef) if step is None else step.add_(z, alpha=coef)
            step.mul_(m)
            if decay:
                step.sub_(p.float() * m, alpha=decay)
            p.add_(step.to(p.dtype))

    def update(self, seed: int, coef: float, decay: float = 0.0) -> None:
        if coef != 0.0 or decay != 0.0:
            self.update_all([seed], [coef], decay)


class SparseMeZO(ZOSolver):
    placements = ("device",)
    placement_note = "its update masks each tensor by the stored weights, read whole"

    def __init__(self, sparsity: float = 0.75, threshold: str = "initial", dist: str = "gaussian",
                 exact: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.sparsity", is_number(sparsity) and 0 <= sparsity < 1, sparsity, "a number in [0, 1)")
        check("solver.threshold", threshold in THRESHOLDS, threshold, str(list(THRESHOLDS)))
        check("solver.exact", exact is True, exact,
              "true (the mask is read from the unperturbed weights, which in-place probes overwrite)")
        self.sparsity, self.threshold = float(sparsity), threshold
        self.engine_options = engine_options(dist, exact, False)
        self.masked: MaskedDirections | None = None
        self._thresholds_fresh = False  # computed for the current theta_t by this step already

    def make_directions(self) -> ExactDirections:
        engine = PerturbationEngine(self.params, dist=self.engine_options["dist"])
        self.masked = MaskedDirections(self.params, engine, magnitude_thresholds(self.params, self.sparsity))
        return ExactDirections(self.params, self.masked)

    def _refresh_thresholds(self) -> None:
        if self.threshold == "current" and not self._thresholds_fresh:
            self.masked.thresholds = magnitude_thresholds(self.params, self.sparsity)
        self._thresholds_fresh = False

    def step(self, batch, step: int) -> StepResult:
        self._refresh_thresholds()
        self._thresholds_fresh = True  # the update below uses the same theta_t
        return super().step(batch, step)

    def replay(self, record: dict) -> None:
        self._refresh_thresholds()
        self.masked.update_all(record["seeds"], record["coefs"], record["decay"])

    def state_dict(self) -> dict:
        return {"thresholds": list(self.masked.thresholds)}

    def load_state_dict(self, state: dict) -> None:
        self.masked.thresholds = list(state["thresholds"])
