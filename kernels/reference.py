"""Pure-torch reference of `kernels.sweep`: the same z, the same arithmetic, any device.

Used on CPU (and wherever Triton is unavailable) and by the tests as the specification of the
kernels. Works chunk by chunk so its temporaries stay small however large a tensor is, which
also exercises the promise that z depends only on the global element index.
"""

from __future__ import annotations

import torch

from kernels.philox import RADEMACHER_GROUP, rounding_uniform, unpack_signs, z_reference
from kernels.sweep_op import SweepOp, scalar_values

CHUNK = 1 << 20
_MANTISSA = {torch.bfloat16: 7, torch.float16: 10}
_MIN_EXP = {torch.bfloat16: -126, torch.float16: -14}


def _scalar(v: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype)


def _z(seed: int, packed: torch.Tensor | None, start: int, n: int, dist: str, device) -> torch.Tensor:
    if packed is None:
        return z_reference(seed, start, n, dist, device)
    first, last = start // RADEMACHER_GROUP, (start + n - 1) // RADEMACHER_GROUP
    z = unpack_signs(packed[first:last + 1].to(device)).flatten()
    lo = start - first * RADEMACHER_GROUP
    return z[lo:lo + n]


def stochastic_round(y: torch.Tensor, u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 y -> grid of `dtype`, rounding up with probability (y - lo) / ulp (unbiased)."""
    e = ((y.view(torch.int32) >> 23) & 0xFF) - 127
    e = (e.clamp(min=_MIN_EXP[dtype]) - _MANTISSA[dtype]).clamp(min=-126)
    ulp = ((e + 127) << 23).view(torch.float32)
    t = y / ulp
    fl = torch.floor(t)
    return (fl + (u < t - fl).to(torch.float32)) * ulp


def _apply(x: torch.Tensor, start: int, op: SweepOp, dist: str, values: tuple) -> torch.Tensor:
    """The swept values of the flat chunk x (global elements [start, start + len(x))), computed
    in fp32 like the kernels (fp64 parameters, which the kernels do not take, in fp64).
    `values` = `scalar_values(op)`."""
    n, device, dtype = x.numel(), x.device, x.dtype
    seed1, seed2, restore_scale, keep, coef, perturb_scale = values
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    y = x.to(acc)
    need_z1 = op.restore_scale is not None or op.coef is not None or (
        op.seed2 is None and op.packed2 is None)
    z1 = _z(seed1, op.packed1, start, n, dist, device).to(acc) if need_z1 else None
    if op.restore_scale is not None:
        y = (y - _scalar(restore_scale, acc) * z1).to(dtype).to(acc)
    if op.coef is not None:
        y = y * _scalar(keep, acc) + _scalar(coef, acc) * z1
        if op.stochastic and dtype in _MANTISSA:
            y = stochastic_round(y, rounding_uniform(seed1, start, n, device), dtype)
        y = y.to(dtype).to(acc)
    if op.perturb_scale is not None:
        z2 = z1 if op.seed2 is None and op.packed2 is None else _z(
            seed2, op.packed2, start, n, dist, device).to(acc)
        y = y + _scalar(perturb_scale, acc) * z2
    return y.to(dtype)


def plan(tensors: list[torch.Tensor], offsets: list[int],
         out: list[torch.Tensor] | None = None) -> None:
    """Nothing to plan: the reference loops over the tensors."""
    return None


@torch.no_grad()
def sweep(tensors: list[torch.Tensor], offsets: list[int], op: SweepOp, dist: str,
          out: list[torch.Tensor] | None = None, plan=None) -> None:
    """Same contract as `kernels.sweep.sweep` (`plan` is ignored)."""
    values = scalar_values(op)
    for i, (x, off) in enumerate(zip(tensors, offsets)):
        src = x.view(-1)
        dst = src if out is None else out[i].view(-1)
        for lo in range(0, src.numel(), CHUNK):
            hi = min(lo + CHUNK, src.numel())
            dst[lo:hi] = _apply(src[lo:hi], off + lo, op, dist, values)


def pack_rademacher(seed: int, n_groups: int, device) -> torch.Tensor:
    from kernels.philox import rademacher_words
    return rademacher_words(seed, 0, n_groups, device)


def unpack_rademacher(words: torch.Tensor, n: int) -> torch.Tensor:
    return unpack_signs(words).flatten()[:n]
