"""Triton kernels for the perturbation sweeps: one pass over a tensor, z generated in registers.

One kernel covers every engine operation as up to three stages applied to each element x of a
parameter tensor (held in fp32 registers, rounded back to the parameter dtype after each stage,
so a fused call is bit-identical to the unfused sequence of calls):

    A  restore   x <- x - scale_a * z1
    B  update    x <- (1 - decay) * x + coef * z1          (optionally stochastically rounded)
    C  perturb   x <- x + scale_c * z2                     (z2 = z1, or a second seed)

Each program handles BLOCK consecutive elements of the *global* flat index space, aligned to
128, so the Philox groups (see `kernels.philox`) never straddle programs: Rademacher tiles are
[BLOCK/128, 128] (one Philox call per row), Gaussian tiles [BLOCK/4, 4] (one call, two
Box-Muller pairs per row). Large tensors get one launch each (their pointer is a kernel
argument, so Triton can prove 16-byte alignment and vectorise); small tensors of one dtype
share one launch through a pointer table, which removes hundreds of launches per sweep on an
LLM. FMA contraction is disabled so the arithmetic rounds exactly like the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.philox import STREAM_GAUSSIAN, STREAM_RADEMACHER, STREAM_ROUNDING
from kernels.sweep_op import SweepOp

BLOCK = 4096
ALIGN = 128
GROUP_MAX_NUMEL = 1 << 22  # tensors below this share one launch
_MANTISSA = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}
_MIN_EXP = {torch.bfloat16: -126, torch.float16: -14, torch.float32: -126}


@triton.jit
def _philox_words(seed, group, STREAM: tl.constexpr):
    c0 = (group & 0xFFFFFFFF).to(tl.uint32)
    c1 = (group >> 32).to(tl.uint32)
    zero = c0 * 0
    return tl.philox(seed, c0, c1, zero + STREAM, zero)


@triton.jit
def _uniform(bits):
    return ((bits >> 8).to(tl.float32) + 0.5) * 5.960464477539063e-08


@triton.jit
def _z_tile(seed, packed_ptr, gbase, G: tl.constexpr, W: tl.constexpr, GAUSSIAN: tl.constexpr,
            PACKED: tl.constexpr):
    """z for global elements gbase + [0, G*W) as a [G, W] fp32 tile (gbase a multiple of W)."""
    group = gbase // W + tl.arange(0, G).to(tl.int64)
    col = tl.arange(0, W)[None, :]
    if GAUSSIAN:
        r0, r1, r2, r3 = _philox_words(seed, group, STREAM_GAUSSIAN)
        rad01 = tl.sqrt(-2.0 * tl.log(_uniform(r0)))
        th01 = 6.283185307179586 * _uniform(r1)
        rad23 = tl.sqrt(-2.0 * tl.log(_uniform(r2)))
        th23 = 6.283185307179586 * _uniform(r3)
        n0 = (rad01 * tl.cos(th01))[:, None]
        n1 = (rad01 * tl.sin(th01))[:, None]
        n2 = (rad23 * tl.cos(th23))[:, None]
        n3 = (rad23 * tl.sin(th23))[:, None]
        z = tl.where(col == 0, n0, tl.where(col == 1, n1, tl.where(col == 2, n2, n3)))
    else:
        if PACKED:
            wp = packed_ptr + group * 4
            r0 = tl.load(wp).to(tl.uint32, bitcast=True)
            r1 = tl.load(wp + 1).to(tl.uint32, bitcast=True)
            r2 = tl.load(wp + 2).to(tl.uint32, bitcast=True)
            r3 = tl.load(wp + 3).to(tl.uint32, bitcast=True)
        else:
            r0, r1, r2, r3 = _philox_words(seed, group, STREAM_RADEMACHER)
        word = tl.where(col < 32, r0[:, None], tl.where(col < 64, r1[:, None],
                        tl.where(col < 96, r2[:, None], r3[:, None])))
        bit = (word >> (col & 31).to(tl.uint32)) & 1
        z = 1.0 - 2.0 * bit.to(tl.float32)
    return z


@triton.jit
def _round_to(y, elem: tl.constexpr):
    """fp32 -> `elem`, round to nearest even; bf16 done by hand (the interpreter truncates)."""
    if elem == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = bits.to(tl.float32, bitcast=True)
    return y.to(elem)


@triton.jit
def _stochastic_round(y, u, MANT: tl.constexpr, EMIN: tl.constexpr):
    """Round fp32 y to a grid of MANT mantissa bits: up with probability (y - lo) / ulp."""
    e = ((y.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, EMIN) - MANT
    e = tl.maximum(e, -126)
    ulp = ((e + 127) << 23).to(tl.float32, bitcast=True)
    t = y / ulp
    fl = tl.floor(t)
    return (fl + (u < t - fl).to(tl.float32)) * ulp


@triton.jit
def _body(x_ptr, out_ptr, n, gstart, shift, tile, seed1, seed2, packed1, packed2,
          scale_a, keep, coef, scale_c,
          W: tl.constexpr, BLOCK_: tl.constexpr, GAUSSIAN: tl.constexpr,
          HAS_A: tl.constexpr, HAS_B: tl.constexpr, HAS_C: tl.constexpr, Z2_SAME: tl.constexpr,
          SR: tl.constexpr, PACKED1: tl.constexpr, PACKED2: tl.constexpr,
          MANT: tl.constexpr, EMIN: tl.constexpr):
    G: tl.constexpr = BLOCK_ // W
    rows = tl.arange(0, G)[:, None].to(tl.int64)
    cols = tl.arange(0, W)[None, :]
    local = tile * BLOCK_ - shift + rows * W + cols
    mask = (local >= 0) & (local < n)
    gbase = gstart + tile * BLOCK_
    x = tl.load(x_ptr + local, mask=mask, other=0.0).to(tl.float32)
    elem = x_ptr.dtype.element_ty
    if HAS_A or HAS_B or Z2_SAME:
        z1 = _z_tile(seed1, packed1, gbase, G, W, GAUSSIAN, PACKED1)
    if HAS_A:
        x = _round_to(x - scale_a * z1, elem).to(tl.float32)
    if HAS_B:
        y = x * keep + coef * z1
        if SR:
            g = gbase + rows * W + cols
            u = _uniform(tl.philox(seed1, (g & 0xFFFFFFFF).to(tl.uint32), (g >> 32).to(tl.uint32),
                                   (g * 0 + STREAM_ROUNDING).to(tl.uint32), (g * 0).to(tl.uint32))[0])
            y = _stochastic_round(y, u, MANT, EMIN)
        x = _round_to(y, elem).to(tl.float32)
    if HAS_C:
        if Z2_SAME:
            z2 = z1
        else:
            z2 = _z_tile(seed2, packed2, gbase, G, W, GAUSSIAN, PACKED2)
        x = x + scale_c * z2
    tl.store(out_ptr + local, _round_to(x, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sweep_one(x_ptr, out_ptr, n, gstart, shift, seed1, seed2, packed1, packed2,
               scale_a, keep, coef, scale_c, W: tl.constexpr, BLOCK_: tl.constexpr,
               GAUSSIAN: tl.constexpr, HAS_A: tl.constexpr, HAS_B: tl.constexpr,
               HAS_C: tl.constexpr, Z2_SAME: tl.constexpr, SR: tl.constexpr,
               PACKED1: tl.constexpr, PACKED2: tl.constexpr, MANT: tl.constexpr,
               EMIN: tl.constexpr):
    tile = tl.program_id(0).to(tl.int64)
    _body(x_ptr, out_ptr, n, gstart.to(tl.int64), shift, tile, seed1, seed2, packed1, packed2,
          scale_a, keep, coef, scale_c, W, BLOCK_, GAUSSIAN, HAS_A, HAS_B, HAS_C, Z2_SAME, SR,
          PACKED1, PACKED2, MANT, EMIN)


@triton.jit
def _sweep_group(like_ptr, ptr_tab, n_tab, gstart_tab, shift_tab, first_tab, tile_tab,
                 seed1, seed2, packed1, packed2, scale_a, keep, coef, scale_c,
                 W: tl.constexpr, BLOCK_: tl.constexpr, GAUSSIAN: tl.constexpr,
                 HAS_A: tl.constexpr, HAS_B: tl.constexpr, HAS_C: tl.constexpr,
                 Z2_SAME: tl.constexpr, SR: tl.constexpr, PACKED1: tl.constexpr,
                 PACKED2: tl.constexpr, MANT: tl.constexpr, EMIN: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(tile_tab + pid)
    x_ptr = tl.load(ptr_tab + t).to(tl.pointer_type(like_ptr.dtype.element_ty))
    tile = (pid - tl.load(first_tab + t)).to(tl.int64)
    _body(x_ptr, x_ptr, tl.load(n_tab + t), tl.load(gstart_tab + t), tl.load(shift_tab + t), tile,
          seed1, seed2, packed1, packed2, scale_a, keep, coef, scale_c, W, BLOCK_, GAUSSIAN,
          HAS_A, HAS_B, HAS_C, Z2_SAME, SR, PACKED1, PACKED2, MANT, EMIN)


def _args(op: SweepOp, dtype: torch.dtype, gaussian: bool, dummy: torch.Tensor) -> tuple[list, dict]:
    if op.stochastic and dtype not in (torch.bfloat16, torch.float16):
        op = SweepOp(**{**op.__dict__, "stochastic": False})
    scalars = [op.seed1, op.seed1 if op.seed2 is None else op.seed2,
               dummy if op.packed1 is None else op.packed1,
               dummy if op.packed2 is None else op.packed2,
               float(op.restore_scale or 0.0), float(1.0 - op.decay), float(op.coef or 0.0),
               float(op.perturb_scale or 0.0)]
    meta = dict(W=4 if gaussian else 128, BLOCK_=BLOCK, GAUSSIAN=gaussian,
                HAS_A=op.restore_scale is not None, HAS_B=op.coef is not None,
                HAS_C=op.perturb_scale is not None, Z2_SAME=op.seed2 is None and op.packed2 is None,
                SR=op.stochastic and op.coef is not None, PACKED1=op.packed1 is not None,
                PACKED2=op.packed2 is not None, MANT=_MANTISSA[dtype], EMIN=_MIN_EXP[dtype],
                enable_fp_fusion=False)
    return scalars, meta


def sweep(tensors: list[torch.Tensor], offsets: list[int], op: SweepOp, dist: str,
          out: torch.Tensor | None = None) -> None:
    """Apply `op` in place to each contiguous tensor whose z starts at `offsets[i]` in the flat
    space; with `out` (one tensor only), write the result there and leave the input untouched."""
    gaussian = dist == "gaussian"
    small: dict[torch.dtype, list[tuple[torch.Tensor, int]]] = {}
    for x, off in zip(tensors, offsets):
        if x.numel() == 0:
            continue
        if out is None and x.numel() < GROUP_MAX_NUMEL:
            small.setdefault(x.dtype, []).append((x, off))
            continue
        dummy = x.new_empty(4, dtype=torch.int32)
        scalars, meta = _args(op, x.dtype, gaussian, dummy)
        shift = off % ALIGN
        grid = (triton.cdiv(x.numel() + shift, BLOCK),)
        _sweep_one[grid](x, x if out is None else out, x.numel(), off - shift, shift, *scalars,
                         **meta)
    for dtype, group in small.items():
        _sweep_grouped(group, op, gaussian)


def _sweep_grouped(group: list[tuple[torch.Tensor, int]], op: SweepOp, gaussian: bool) -> None:
    device = group[0][0].device
    tiles = [triton.cdiv(x.numel() + off % ALIGN, BLOCK) for x, off in group]
    first = [sum(tiles[:i]) for i in range(len(tiles))]
    table = torch.tensor([[x.data_ptr(), x.numel(), off - off % ALIGN, off % ALIGN, f]
                          for (x, off), f in zip(group, first)], dtype=torch.int64).t().contiguous()
    tile_tab = torch.repeat_interleave(torch.arange(len(group), dtype=torch.int32),
                                       torch.tensor(tiles)).to(device)
    table = table.to(device)
    like = group[0][0]
    scalars, meta = _args(op, like.dtype, gaussian, like.new_empty(4, dtype=torch.int32))
    _sweep_group[(sum(tiles),)](like, *table, tile_tab, *scalars, **meta)


@triton.jit
def _pack_kernel(words_ptr, seed, first_group, n_groups, ROWS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    mask = row < n_groups
    r0, r1, r2, r3 = _philox_words(seed, first_group + row, STREAM_RADEMACHER)
    base = words_ptr + row * 4
    tl.store(base, r0.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 1, r1.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 2, r2.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 3, r3.to(tl.int32, bitcast=True), mask=mask)


def pack_rademacher(seed: int, n_groups: int, device) -> torch.Tensor:
    """Sign words [n_groups, 4] (int32, 1 bit per element) of the first n_groups*128 elements."""
    words = torch.empty(n_groups, 4, dtype=torch.int32, device=device)
    rows = 1024
    _pack_kernel[(triton.cdiv(n_groups, rows),)](words, seed, 0, n_groups, ROWS=rows)
    return words


@triton.jit
def _unpack_kernel(words_ptr, out_ptr, n, BLOCK_: tl.constexpr):
    G: tl.constexpr = BLOCK_ // 128
    tile = tl.program_id(0).to(tl.int64)
    idx = tile * BLOCK_ + tl.arange(0, G)[:, None].to(tl.int64) * 128 + tl.arange(0, 128)[None, :]
    z = _z_tile(0, words_ptr, tile * BLOCK_, G, 128, False, True)
    tl.store(out_ptr + idx, z, mask=idx < n)


def unpack_rademacher(words: torch.Tensor, n: int) -> torch.Tensor:
    """The first n signs (float32 +-1) held in `words` (as written by `pack_rademacher`)."""
    out = torch.empty(n, dtype=torch.float32, device=words.device)
    _unpack_kernel[(triton.cdiv(n, BLOCK),)](words, out, n, BLOCK_=BLOCK)
    return out
