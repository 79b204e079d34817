"""ZO-Muon: subspace zeroth-order gradient estimates, orthogonalised by Muon's Newton-Schulz.

Source: OPTML-Group/ZO-Muon ("Powering Up Zeroth-Order Training via Subspace Gradient
Orthogonalization"), read in its README and `llm/LowDimTrainer.py` (`lowdim_zo_step`,
`lowdim_zo_update`, `zeropower_via_newtonschulz5`: the LLM recipe `OPT=muon
MULTIPLE_SAMPLE=True`). The paper's own text was not available here, so the rule below is
written against the released code and the README, and no equation numbers are cited.

The rule, per step t, for each trainable matrix W (m x n):

1. Subspace. P (m x r, orthonormal columns, r = `rank`) is the Q factor of an m x r Gaussian
   matrix with the signs of diag(R) folded in (a Haar-distributed basis); it is drawn anew every
   `update_interval` steps (the README's STEP_INTERVAL) and is a pure function of
   (seed, t // update_interval, parameter index).
2. Queries. For i = 1..N (`n_perts`, the README's NUM_SAMPLES) a Gaussian U_i (r x n) drawn from
   the step's i-th seed gives the direction Z_i = P U_i. `perturbation=one_side` (the source's
   MULTIPLE_SAMPLE mode, the default): f0 = f(theta) once, g_i = (f(theta + eps Z_i) - f0) / eps,
   N + 1 forward passes. `two_side`: g_i = (f(theta + eps Z_i) - f(theta - eps Z_i)) / (2 eps),
   2 N forward passes (the source's single-sample mode, generalised to N).
3. Low-dimensional estimate R = 1/N sum_i g_i U_i (r x n), never a full m x n gradient estimate.
4. Orthogonalisation O = NS5(R): X = R / (||R||_F + 1e-7) (transposed when r > n), then five
   quintic Newton-Schulz iterations X <- a X + (b A + c A^2) X with A = X X^T and
   (a, b, c) = (3.4445, -4.7750, 2.0315); O has (approximately) R's singular vectors and
   singular values near 1.
5. Update W <- W - lr (P O + weight_decay W).

Parameters that are not matrices (biases, norms; none under the default LoRA) get the plain
averaged ZO-SGD step theta <- theta - vector_lr (1/N sum_i g_i z_i + weight_decay theta) with
Gaussian z_i; the source hard-codes vector_lr = 1e-7 there, which is the YAML default.

The perturbation is SubZero's machinery with a one-sided basis: `ProjectedDirections` is a
`LowRankDirections` whose Z is P U rather than U S V^T, and with `exact=true` it goes through
`ExactDirections` (virtual perturbation: bit-exact restore). A step records
(subspace, seeds, projected gradients, lr), from which `replay` regenerates P and every U_i and
redoes the update bit for bit; the solver keeps no state across steps (no momentum: the
source's LLM recipe has none), so records replay independently of each other.
"""

from __future__ import annotations

import torch

from zoexp.perturb import ExactDirections
from zoexp.solvers.base import StepResult, check
from zoexp.solvers.subzero import LowRankDirections, SubZero

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration: an approximate orthogonal factor of `g` (float32)."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class ProjectedDirections(LowRankDirections):
    """ZO-Muon's directions: Z = P U for a matrix (P m x r orthonormal, U r x n Gaussian from the
    seed), a Gaussian for anything else. The perturb / restore / update verbs are SubZero's."""

    def use_subspace(self, index: int) -> None:
        """Draw every matrix's basis P for subspace `index` (a no-op if already current)."""
        if index == self.subspace:
            return
        self.bases = {}
        for i, p in enumerate(self.params):
            if p.dim() == 2:
                gen = self._generator(-1, index, i)
                q, r = torch.linalg.qr(torch.randn(p.shape[0], self.rank, generator=gen))
                signs = torch.sign(torch.diagonal(r))
                signs[signs == 0] = 1.0
                self.bases[i] = (q * signs).to(p.device)
        self.subspace = index

    def core(self, seed: int, index: int) -> torch.Tensor:
        """U (r x n) of a matrix, or the Gaussian z of any other parameter (float32)."""
        p, gen = self.params[index], self._generator(seed, index)
        if index in self.bases:
            return torch.randn(self.rank, p.shape[1], generator=gen).to(p.device)
        return torch.randn(p.shape, generator=gen).to(p.device)

    seeded_factors = ("v",)

    def factors(self, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Z = P I U of matrix `index` (see LowRankDirections.factors): V = U^T is the seed's."""
        p = self.bases[index]
        return p, torch.eye(self.rank, device=p.device), self.core(seed, index).T

    def direction(self, seed: int, index: int) -> torch.Tensor:
        z = self.core(seed, index)
        return self.bases[index] @ z if index in self.bases else z


class ZOMuon(SubZero):
    def __init__(self, perturbation: str = "one_side", vector_lr: float = 1e-7, ns_steps: int = 5,
                 **kwargs) -> None:
        super().__init__(perturbation=perturbation, **kwargs)
        check("solver.vector_lr", isinstance(vector_lr, (int, float)) and not isinstance(vector_lr, bool)
              and 0 <= vector_lr < float("inf"), vector_lr, "a finite number >= 0")
        check("solver.ns_steps", isinstance(ns_steps, int) and not isinstance(ns_steps, bool) and ns_steps >= 1,
              ns_steps, "an integer >= 1")
        self.vector_lr, self.ns_steps = float(vector_lr), ns_steps

    def make_directions(self) -> ProjectedDirections | ExactDirections:
        self.low_rank = ProjectedDirections(self.params, self.rank, self.seed)
        return ExactDirections(self.params, self.low_rank) if self.exact else self.low_rank

    # ---- probes ----------------------------------------------------------------------------
    def query(self, batch, step: int) -> tuple[list[int], list[float], float]:
        """(seeds, projected gradients g_i, training loss) of the step's N queries (one-sided
        or central differences: `ZOSolver.probe_pairs`)."""
        f0, seeds, plus, minus = self.probe_pairs(batch, step)
        grads = [(p - m) / (2 * self.eps) for p, m in zip(plus, minus)]
        return seeds, grads, f0 if f0 is not None else sum(plus + minus) / (2 * len(seeds))

    def step(self, batch, step: int) -> StepResult:
        self.low_rank.use_subspace(self.subspace_index(step))
        seeds, grads, loss = self.query(batch, step)
        return self.finish(step, seeds, grads, loss=loss)

    # ---- update ------------------------------------------------------------------------------
    def make_record(self, step: int, seeds: list[int], grads: list[float]) -> dict:
        return {"subspace": self.subspace_index(step), "seeds": seeds, "proj_grads": grads,
                "lr": self.lr_at(step)}

    @torch.no_grad()
    def replay(self, record: dict) -> None:
        d = self.low_rank
        d.use_subspace(record["subspace"])
        seeds, lr = record["seeds"], record["lr"]
        weights = [g / len(seeds) for g in record["proj_grads"]]
        for i, p in enumerate(self.params):
            estimate = None
            for seed, w in zip(seeds, weights):
                core = d.core(seed, i)
                estimate = core.mul_(w) if estimate is None else estimate.add_(core, alpha=w)
            if i in d.bases:
                step_lr, change = lr, d.bases[i] @ newton_schulz5(estimate, self.ns_steps)
            else:
                step_lr, change = self.vector_lr, estimate
            if self.weight_decay:
                p.mul_(1.0 - step_lr * self.weight_decay)
            p.add_(change.to(p.dtype), alpha=-step_lr)
