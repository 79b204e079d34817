"""SubZero (arXiv 2410.08989): ZO-SGD with layer-wise low-rank perturbations.

For each 2-D weight W (m x n), column-orthonormal U (m x r) and V (n x r) (QR of Gaussian
matrices) span a random subspace that is kept for `update_interval` steps; each direction is
Z = U S V^T with S an r x r Gaussian drawn from the direction's seed. Parameters that are not
matrices get a plain Gaussian. U, V and S are pure functions of (seed, step, parameter index),
generated on the CPU with torch's generator, so directions do not depend on the device and a
step replays from (subspace index, seed, coefficient).

The directions are plain torch and allocate one temporary the size of the layer being
perturbed. With `exact=True` (default) they go through `ExactDirections`, the engine's virtual
perturbation: stored weights change only in the update, so restores are bit-exact and a run
replays bit-exactly from its trajectory; `exact=False` adds and subtracts in place (float
rounding can leave an ulp of drift per perturb / restore cycle).
"""

from __future__ import annotations

from typing import Sequence

import torch

from zoexp.errors import ConfigError
from zoexp.perturb import ExactDirections, InPlaceDirections
from zoexp.solvers.base import StepResult, check, derive_seed
from zoexp.solvers.zo import ZOSolver


class LowRankDirections(InPlaceDirections):
    """Seeded SubZero directions over a list of parameters (the engine's verbs, in torch)."""

    exact = False  # perturb / restore add in place

    def __init__(self, params: Sequence[torch.Tensor], rank: int, seed: int) -> None:
        self.params, self.rank, self.seed = list(params), rank, seed
        for i, p in enumerate(self.params):
            if p.dim() == 2 and rank > min(p.shape):
                raise ConfigError("solver.rank", f"got {rank}; allowed: 1..{min(p.shape)} (trainable "
                                  f"parameter #{i} is a {p.shape[0]} x {p.shape[1]} matrix)")
        self.subspace: int | None = None
        self.bases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    seed_bits = 64  # SubZero.set_seed_bits sets 31 to replay a format-1 trajectory

    def _generator(self, *keys: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, *keys, bits=self.seed_bits))

    def use_subspace(self, index: int) -> None:
        """Regenerate every matrix's (U, V) for subspace `index` (a no-op if already current)."""
        if index == self.subspace:
            return
        self.bases = {}
        for i, p in enumerate(self.params):
            if p.dim() == 2:
                gen = self._generator(-1, index, i)  # negative key: never a (step, k) direction seed
                u = torch.linalg.qr(torch.randn(p.shape[0], self.rank, generator=gen))[0]
                v = torch.linalg.qr(torch.randn(p.shape[1], self.rank, generator=gen))[0]
                self.bases[i] = (u.to(p.device), v.to(p.device))
        self.subspace = index

    def direction(self, seed: int, index: int, device: torch.device | None = None) -> torch.Tensor:
        """Z for parameter `index`: U S V^T for a matrix, a Gaussian otherwise (float32), on
        `device` (default: where the parameter is; an offloaded block's bases stay on the host
        and are moved for its uploaded copy)."""
        p = self.params[index]
        device = p.device if device is None else device
        if index in self.bases:
            u, v = (b.to(device) for b in self.bases[index])
            return u @ self.core(seed, index).to(device) @ v.T
        return torch.randn(p.shape, generator=self._generator(seed, index)).to(device)

    def core(self, seed: int, index: int) -> torch.Tensor:
        """S of direction `seed` for matrix `index` (r x r, float32, on the CPU)."""
        return torch.randn(self.rank, self.rank, generator=self._generator(seed, index))

    # Which of the factors of `factors` depend on the direction's seed (the others are the
    # subspace's, shared by every direction of a step).
    seeded_factors: tuple[str, ...] = ("s",)

    def factors(self, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Z of matrix `index` as (U [m x r], S [r x r'], V [n x r']) with Z = U S V^T (float32,
        on the parameter's device): batched probes (`zoexp.batched_probes`) apply Z to their
        inputs as three thin matmuls instead of forming it."""
        u, v = self.bases[index]
        return u, self.core(seed, index).to(u.device), v

    def subset(self, params: Sequence[torch.Tensor], indices: Sequence[int]) -> "LowRankView":
        """The directions of parameters `indices`, acting on `params` (an uploaded block)."""
        return LowRankView(self, params, indices)


class LowRankView(InPlaceDirections):
    """Some of a low-rank directions object's parameters, held by other tensors
    (zoexp.offload uploads a block): the same Z (same generator keys, same subspace), computed
    on the tensors' device."""

    exact = False

    def __init__(self, root: LowRankDirections, params: Sequence[torch.Tensor],
                 indices: Sequence[int]) -> None:
        self.root, self.params, self.indices = root, list(params), list(indices)

    def direction(self, seed: int, index: int) -> torch.Tensor:
        return self.root.direction(seed, self.indices[index], self.params[index].device)

    def subset(self, params: Sequence[torch.Tensor], indices: Sequence[int]) -> "LowRankView":
        return LowRankView(self.root, params, [self.indices[i] for i in indices])


class SubZero(ZOSolver):
    directions_kind = "low_rank"  # batched probes apply with any peft (zoexp.batched_probes)
    placements = ("device", "offload")
    placement_note = "its low-rank directions are not generated element by element: no fsdp"

    def __init__(self, rank: int = 8, update_interval: int = 1000, lora_rank: int | None = None,
                 exact: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.rank", isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1, rank,
              "an integer >= 1")
        check("solver.update_interval", isinstance(update_interval, int) and update_interval >= 1,
              update_interval, "an integer >= 1")
        # LoRA matrices are r x n and m x r: a larger SubZero rank is known to fail before loading.
        check("solver.rank", lora_rank is None or rank <= lora_rank, rank,
              f"1..{lora_rank} (peft=lora matrices have rank {lora_rank})")
        check("solver.exact", isinstance(exact, bool), exact, "true or false")
        self.rank, self.update_interval, self.exact = rank, update_interval, exact
        self.low_rank: LowRankDirections | None = None

    @property
    def graphable_steps(self) -> bool:
        """Exact mode computes each read's U S V^T on the host: not replayable from a graph."""
        return not self.exact

    def make_directions(self) -> LowRankDirections | ExactDirections:
        self.low_rank = LowRankDirections(self.params, self.rank, self.seed)
        self.low_rank.seed_bits = self.seed_bits
        return ExactDirections(self.params, self.low_rank) if self.exact else self.low_rank

    def set_seed_bits(self, bits: int) -> None:
        super().set_seed_bits(bits)
        if self.low_rank is not None:
            self.low_rank.seed_bits, self.low_rank.subspace = bits, None

    def subspace_index(self, step: int) -> int:
        return step // self.update_interval

    def step(self, batch, step: int) -> StepResult:
        index = self.subspace_index(step)
        if self.low_rank.subspace not in (None, index):
            self.settle()  # deferred updates (offload) still need the old subspace's Z
        self.low_rank.use_subspace(index)
        return super().step(batch, step)

    def make_record(self, step: int, seeds: list[int], grads: list[float]) -> dict:
        return {"subspace": self.subspace_index(step), **super().make_record(step, seeds, grads)}

    def replay(self, record: dict) -> None:
        self.low_rank.use_subspace(record["subspace"])
        super().replay(record)
