"""The description of one sweep, shared by the Triton kernels and the torch reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SweepOp:
    """Which stages run, and their scalars. `packed1`/`packed2`: sign words instead of seeds."""

    seed1: int = 0
    restore_scale: float | None = None          # stage A
    coef: float | None = None                   # stage B (with decay)
    decay: float = 0.0
    stochastic: bool = False
    perturb_scale: float | None = None          # stage C
    seed2: int | None = None                    # None: stage C uses z1
    packed1: torch.Tensor | None = None
    packed2: torch.Tensor | None = None
