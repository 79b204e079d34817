"""Perturbation engine: in-place `theta += scale * z(seed)` over the trainable parameters.

z is regenerated from the seed whenever it is needed and never stored, so a ZO step costs
the memory of inference. PLACEHOLDER implementation (per-tensor torch generators); the
kernels work replaces the internals with counter-based z over the flat parameter space.

Contract the solvers and `zoexp.replay` rely on: every fused method is bit-identical to its
unfused sequence (`restore_and_update(s, e, c, d)` == `restore(s, e); update(s, c, d)`), so a
run replayed from its seed trajectory with `update` alone reproduces the trained weights.
"""

from __future__ import annotations

from typing import Sequence

import torch

DISTS = ("gaussian", "rademacher")


class PerturbationEngine:
    """Applies seeded directions to a fixed list of parameter tensors, in place."""

    def __init__(self, params: Sequence[torch.Tensor], dist: str = "gaussian") -> None:
        if dist not in DISTS:
            raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")
        self.params = list(params)
        self.dist = dist

    def _z(self, seed: int, index: int, p: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator(device=p.device).manual_seed(seed * 1_000_003 + index)
        if self.dist == "gaussian":
            return torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
        return torch.randint(0, 2, p.shape, generator=gen, device=p.device).float().mul_(2).sub_(1)

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        """theta <- theta + scale * z(seed)."""
        for i, p in enumerate(self.params):
            p.add_(self._z(seed, i, p).to(p.dtype), alpha=scale)

    @torch.no_grad()
    def restore(self, seed: int, scale: float) -> None:
        """Undo `perturb(seed, scale)`."""
        self.perturb(seed, -scale)

    @torch.no_grad()
    def move(self, seed: int, old_scale: float, new_scale: float) -> None:
        """Go from the `old_scale` perturbation to the `new_scale` one (same seed)."""
        self.restore(seed, old_scale)
        self.perturb(seed, new_scale)

    @torch.no_grad()
    def update(self, seed: int, coef: float, decay: float = 0.0) -> None:
        """theta <- (1 - decay) * theta + coef * z(seed): the ZO-SGD step with weight decay."""
        for i, p in enumerate(self.params):
            if decay:
                p.mul_(1.0 - decay)
            p.add_(self._z(seed, i, p).to(p.dtype), alpha=coef)

    @torch.no_grad()
    def restore_and_update(self, seed: int, scale: float, coef: float, decay: float = 0.0) -> None:
        """Undo `perturb(seed, scale)`, then `update(seed, coef, decay)`."""
        self.restore(seed, scale)
        self.update(seed, coef, decay)
