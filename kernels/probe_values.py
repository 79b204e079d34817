"""Triton kernel: the perturbed values rnd(theta + scale_g * z(seed_g)) of many probes at once.

Batched probes (`zoexp.batched_probes`) give each row group of one forward its own perturbed
copy of the small trainable tensors (LoRA, prefix, prompt). Those copies must be exactly what
the engine's virtual perturbation reads during a sequential probe (`PerturbationEngine.
_materialize`: `kernels.sweep.sweep(..., out=)` with a perturb-only op), so this kernel is the
same element function -- `kernels.sweep._body` with stage C only, the same tile shape, no FMA
contraction -- over a second grid axis of probes: one launch writes G probes x every tensor,
where one `sweep` per probe would cost G launches (and G trips through Python) per step.

Output layout: one flat buffer `out` of shape [G, total] for all tensors of one dtype; tensor i
occupies columns [bases[i], bases[i] + numel_i) of every row, and row `rows[j]` receives probe j.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import sweep as _sweep

_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = {}


@triton.jit
def _probe_values(like_ptr, ptr_tab, n_tab, gstart_tab, shift_tab, first_tab, base_tab, tile_tab,
                  out_ptr, row_stride, rows_ptr, seeds_ptr, scales_ptr, dummy,
                  W: tl.constexpr, BLOCK_: tl.constexpr, GAUSSIAN: tl.constexpr,
                  MANT: tl.constexpr, EMIN: tl.constexpr):
    pid = tl.program_id(0)
    j = tl.program_id(1)
    t = tl.load(tile_tab + pid)
    x_ptr = tl.load(ptr_tab + t).to(tl.pointer_type(like_ptr.dtype.element_ty))
    row = tl.load(rows_ptr + j).to(tl.int64)
    dst = out_ptr + row * row_stride + tl.load(base_tab + t)
    seed = tl.load(seeds_ptr + j)
    scale = tl.load(scales_ptr + j)
    tile = (pid - tl.load(first_tab + t)).to(tl.int64)
    _sweep._body(x_ptr, dst, tl.load(n_tab + t), tl.load(gstart_tab + t), tl.load(shift_tab + t),
                 tile, seed, seed, dummy, dummy, 0.0, 1.0, 0.0, scale, W, BLOCK_, GAUSSIAN,
                 False, False, True, True, False, False, False, MANT, EMIN)


def _tables(tensors: list[torch.Tensor], offsets: list[int], bases: list[int]
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Device tables (pointer, numel, aligned global start, shift, first tile, output column;
    tile -> tensor), cached by address and layout like `kernels.sweep`'s group tables."""
    key = tuple((x.data_ptr(), x.numel(), off, b) for x, off, b in zip(tensors, offsets, bases))
    key += (str(tensors[0].device),)
    if key not in _TABLES:
        align, block = _sweep.ALIGN, _sweep.BLOCK
        tiles = [triton.cdiv(x.numel() + off % align, block) for x, off in zip(tensors, offsets)]
        first = [sum(tiles[:i]) for i in range(len(tiles))]
        table = torch.tensor([[x.data_ptr(), x.numel(), off - off % align, off % align, f, b]
                              for x, off, f, b in zip(tensors, offsets, first, bases)],
                             dtype=torch.int64)
        tile_tab = torch.repeat_interleave(torch.arange(len(tensors), dtype=torch.int32),
                                           torch.tensor(tiles))
        device = tensors[0].device
        _TABLES[key] = (table.t().contiguous().to(device), tile_tab.to(device), sum(tiles))
    return _TABLES[key]


def probe_values(tensors: list[torch.Tensor], offsets: list[int], bases: list[int],
                 out: torch.Tensor, rows: list[int], seeds: list[int], scales: list[float],
                 dist: str) -> None:
    """out[rows[j], bases[i]:bases[i] + numel_i] = rnd(tensors[i] + scales[j] z(seeds[j]))
    for every tensor i (one dtype, contiguous, z starting at global index offsets[i])."""
    if not rows or not tensors:
        return
    device, dtype = tensors[0].device, tensors[0].dtype
    table, tile_tab, n_tiles = _tables(tensors, offsets, bases)
    rows_t = torch.tensor(rows, dtype=torch.int32).to(device, non_blocking=True)
    seeds_t = torch.tensor(seeds, dtype=torch.int64).to(device, non_blocking=True)
    scales_t = torch.tensor(scales, dtype=torch.float32).to(device, non_blocking=True)
    gaussian = dist == "gaussian"
    if device not in _sweep._DUMMIES:
        _sweep._DUMMIES[device] = torch.zeros(4, dtype=torch.int32, device=device)
    _probe_values[(n_tiles, len(rows))](
        tensors[0], *table, tile_tab, out, out.stride(0), rows_t, seeds_t, scales_t,
        _sweep._DUMMIES[device], W=_sweep.GAUSSIAN_W if gaussian else 128, BLOCK_=_sweep.BLOCK,
        GAUSSIAN=gaussian, MANT=_sweep._MANTISSA[dtype], EMIN=_sweep._MIN_EXP[dtype],
        num_warps=_sweep.NUM_WARPS_GAUSSIAN if gaussian else _sweep.NUM_WARPS_RADEMACHER,
        enable_fp_fusion=False)
