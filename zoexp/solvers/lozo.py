"""LOZO (Chen et al., ICLR 2025, arXiv 2410.07698, "Enhancing Zeroth-order Fine-tuning for
Language Models with Low-rank Structures"): ZO-SGD with per-matrix low-rank perturbations and
lazy sampling of the right factor.

For each 2-D weight W (m x n) the perturbation is Z = U V^T with U (m x r) and V (n x r) both
standard Gaussian (not orthonormalised, unlike SubZero). V is drawn once per window of `nu`
steps and kept (the paper's lazy sampling: windows k = floor(t / nu)); U is drawn afresh for
every direction of every step. Parameters that are not matrices (biases, norms) get a plain
Gaussian z, as in the paper and its code. The step is the paper's low-rank gradient estimator
(LGE) inside ZO-SGD:

    c = (f(W + eps U V^T) - f(W - eps U V^T)) / (2 eps),   W <- W - lr * c * U V^T,

averaged over `n_perts` directions (U_k drawn from the direction seeds, V shared), 2 n
forwards a step (1 + n with `perturbation=one_side`). Scale: the paper writes the estimator
as c U V^T / r (unbiased: E[<G, U V^T> U V^T] = r G); the authors' released trainer applies
c U V^T and leaves the factor to the learning rate. We follow the released code, so lr here
is the paper's lr / r.

U and V are pure functions of (seed, window or direction seed, parameter index), drawn on the
CPU with torch's generator like SubZero's bases, so a step replays from (window, seeds,
coefficients), bit-exactly with `exact=True` (the virtual perturbation of
`perturb.ExactDirections`: stored weights change only in the update). Memory: V, one n x r
float32 matrix per trainable matrix, is the only state.

This is SubZero's machinery (`subzero.py`) with another direction: the window bookkeeping,
validation (`rank` at most the smallest side of a trainable matrix; `update_interval` is nu),
records and replay are inherited.
"""

from __future__ import annotations

import torch

from zoexp.perturb import ExactDirections
from zoexp.solvers.subzero import LowRankDirections, SubZero


class LazyLowRankDirections(LowRankDirections):
    """LOZO's Z = U V^T: V (n x r) per window `use_subspace(k)`, U (m x r) per direction seed;
    `bases[i]` holds V of matrix i."""

    def right_factor(self, window: int, index: int) -> torch.Tensor:
        """V of matrix `index` in window `window` (n x r, standard Gaussian, float32)."""
        p = self.params[index]
        gen = self._generator(-2, window, index)  # negative key: never a (step, k) direction seed
        return torch.randn(p.shape[1], self.rank, generator=gen).to(p.device)

    def use_subspace(self, index: int) -> None:
        """Draw every matrix's V for window `index` (a no-op if already current)."""
        if index == self.subspace:
            return
        self.bases = {i: self.right_factor(index, i) for i, p in enumerate(self.params) if p.dim() == 2}
        self.subspace = index

    def left_factor(self, seed: int, index: int) -> torch.Tensor:
        """U of matrix `index` for direction `seed` (m x r, standard Gaussian, float32)."""
        p = self.params[index]
        return torch.randn(p.shape[0], self.rank, generator=self._generator(seed, index)).to(p.device)

    seeded_factors = ("u",)

    def factors(self, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Z = U I V^T of matrix `index` (see LowRankDirections.factors): U is the seed's."""
        v = self.bases[index]
        return self.left_factor(seed, index), torch.eye(self.rank, device=v.device), v

    def direction(self, seed: int, index: int, device: torch.device | None = None) -> torch.Tensor:
        """Z for parameter `index`: U V^T for a matrix, a Gaussian otherwise (float32), on
        `device` (default: the parameter's; see LowRankDirections.direction)."""
        p = self.params[index]
        device = p.device if device is None else device
        if index in self.bases:
            return self.left_factor(seed, index).to(device) @ self.bases[index].to(device).T
        return torch.randn(p.shape, generator=self._generator(seed, index)).to(device)


class LOZO(SubZero):
    def make_directions(self) -> LazyLowRankDirections | ExactDirections:
        self.low_rank = LazyLowRankDirections(self.params, self.rank, self.seed)
        return ExactDirections(self.params, self.low_rank) if self.exact else self.low_rank
