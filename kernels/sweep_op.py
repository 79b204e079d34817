"""The description of one sweep, shared by the Triton kernels and the torch reference."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SweepOp:
    """Which stages run, and their scalars. `packed1`/`packed2`: sign words instead of seeds.

    With `scalars` set, the kernels read the seeds and scales from that device tensor (see
    `DeviceScalars`) instead of from these fields, which then only say which stages run
    (a field that is None switches its stage off, whatever the tensor holds)."""

    seed1: int = 0
    restore_scale: float | None = None          # stage A
    coef: float | None = None                   # stage B (with decay)
    decay: float = 0.0
    stochastic: bool = False
    perturb_scale: float | None = None          # stage C
    seed2: int | None = None                    # None: stage C uses z1
    packed1: torch.Tensor | None = None
    packed2: torch.Tensor | None = None
    scalars: torch.Tensor | None = None         # DeviceScalars.words, read by the kernels


# Order of the words in a DeviceScalars tensor.
SEED1, SEED2, RESTORE, KEEP, COEF, PERTURB = range(6)


def _seed_word(seed: int) -> int:
    """A seed (< 2^64) as the int64 with the same 64 bits."""
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _float_word(value: float) -> int:
    """The bit pattern of float32(value) (round to nearest, like a Triton fp32 argument)."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


class DeviceScalars:
    """The seeds and scales of a sweep in one int64 device tensor, for kernels captured in a
    CUDA graph: the graph bakes in the *address*, so writing new values before a replay is
    all it takes to sweep with another (seed, scale). Words: seed1, seed2, then the float32
    bit patterns of restore_scale, 1 - decay, coef and perturb_scale -- the same float32
    values the kernels get as arguments otherwise, so both paths round identically."""

    def __init__(self, device) -> None:
        self.words = torch.zeros(6, dtype=torch.int64, device=device)
        self._pin = self.words.is_cuda

    def write(self, op: SweepOp) -> SweepOp:
        """Store op's scalars (stream-ordered: no host sync) and return op reading them."""
        seed1, seed2, *values = scalar_values(op)
        host = torch.tensor([_seed_word(seed1), _seed_word(seed2), *map(_float_word, values)],
                            dtype=torch.int64)
        if self._pin:  # pinned, so the copy is asynchronous; the host allocator keeps it alive
            host = host.pin_memory()
        self.words.copy_(host, non_blocking=self._pin)
        return SweepOp(**{**op.__dict__, "scalars": self.words})


def scalar_values(op: SweepOp) -> tuple[int, int, float, float, float, float]:
    """(seed1, seed2, restore_scale, 1 - decay, coef, perturb_scale) of op: from its fields, or
    read back from its `scalars` tensor (a host sync: for the torch reference and tests).
    Stages that do not run get 0.0."""
    if op.scalars is None:
        return (op.seed1, op.seed1 if op.seed2 is None else op.seed2, float(op.restore_scale or 0.0),
                float(1.0 - op.decay), float(op.coef or 0.0), float(op.perturb_scale or 0.0))
    w = op.scalars.tolist()
    f = [struct.unpack("<f", struct.pack("<i", w[i]))[0] for i in (RESTORE, KEEP, COEF, PERTURB)]
    return (w[SEED1] % (1 << 64), w[SEED2] % (1 << 64), *f)
