"""SubZero-AdaMU: ZO-AdaMU's momentum perturbation inside SubZero's random subspaces.

The rule is `zo_adamu`'s (zoexp/solvers/zo_adamu.py: the reading of the paper's equations, the
annealing schedule and the config keys that settle its ambiguities), with one change: the two
fresh draws xi', xi'' of a step are SubZero directions U S V^T (per matrix, in the subspace
(U, V) of `zoexp/solvers/subzero.py:LowRankDirections`, renewed every `update_interval` steps;
a plain Gaussian for non-matrix parameters) instead of full-space Gaussians. So
z' = sqrt(alpha) xi', z'' = m_{t-1} + sqrt(1 - alpha) xi'' and the perturbation
m_t = beta1 z' + (1 - beta1) z''. While the subspace is fixed, m stays in it (a sum of
U S V^T terms); at a renewal the momentum keeps what it had -- the reading taken where the
SubZero README's `subzero_adamu` says no more -- and decays as (1 - beta1)^k from there.

m is kept as a full-shape float32 tensor per parameter (+4 bytes per parameter, as zo_adamu);
the record adds the subspace index, so `replay` regenerates (U, V) and redoes the step bit for
bit.
"""

from __future__ import annotations

from zoexp.solvers.base import check
from zoexp.solvers.subzero import LowRankDirections
from zoexp.solvers.zo_adamu import ZOAdaMU


class SubZeroAdaMU(ZOAdaMU):
    def __init__(self, rank: int = 8, update_interval: int = 1000, lora_rank: int | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.rank", isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1, rank,
              "an integer >= 1")
        check("solver.update_interval", isinstance(update_interval, int) and not isinstance(update_interval, bool)
              and update_interval >= 1, update_interval, "an integer >= 1")
        check("solver.rank", lora_rank is None or rank <= lora_rank, rank,
              f"1..{lora_rank} (peft=lora matrices have rank {lora_rank})")
        self.rank, self.update_interval = rank, update_interval
        self.low_rank: LowRankDirections | None = None

    def make_noise(self) -> LowRankDirections:
        self.low_rank = LowRankDirections(self.params, self.rank, self.seed)
        self.low_rank.seed_bits = self.seed_bits
        return self.low_rank

    def set_seed_bits(self, bits: int) -> None:
        super().set_seed_bits(bits)
        if self.low_rank is not None:  # its subspaces are derived with the same bits
            self.low_rank.seed_bits, self.low_rank.subspace = bits, None

    def subspace_index(self, step: int) -> int:
        return step // self.update_interval

    def record_extra(self, step: int) -> dict:
        return {"subspace": self.subspace_index(step)}

    def prepare(self, record: dict) -> None:
        super().prepare(record)
        self.low_rank.use_subspace(record["subspace"])
