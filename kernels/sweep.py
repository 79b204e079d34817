"""Triton kernels for the perturbation sweeps: one pass over a tensor, z generated in registers.

One kernel covers every engine operation as up to three stages applied to each element x of a
parameter tensor (held in fp32 registers, rounded back to the parameter dtype after each stage,
so a fused call is bit-identical to the unfused sequence of calls):

    A  restore   x <- x - scale_a * z1
    B  update    x <- (1 - decay) * x + coef * z1          (optionally stochastically rounded)
    C  perturb   x <- x + scale_c * z2                     (z2 = z1, or a second seed)

Each program handles BLOCK consecutive elements of the *global* flat index space, aligned to
128, so the Philox groups (see `kernels.philox`) never straddle programs. Tiles are
[BLOCK/128, 128]: a Rademacher row takes its 128 signs from one Philox call; a Gaussian row
makes 32 calls, each giving two Box-Muller pairs, interleaved back into element order with
`tl.join` (GAUSSIAN_W = 4 selects [BLOCK/4, 4] tiles instead, one call per row: 3.7x slower
for a Gaussian move on H100). On the GPU the Box-Muller angle goes through the hardware's
approximate sin/cos (to ~2e-6 of the reference, see `_z_tile`).

A sweep over many tensors is one launch per dtype (multi-tensor apply): a pointer table says
which tensor each program's tile belongs to, so a whole-model sweep costs one launch instead
of one per tensor -- the difference between a launch-bound and a bandwidth-bound sweep on
models of a few billion parameters or less. Where every tensor of the table is 16-byte
aligned (checked on the host) the kernel is told so (`tl.multiple_of`), so its loads and
stores stay 16 bytes wide as for a pointer argument. A single tensor is swept with its
pointer as an argument (`_sweep_one`), which needs no table and so can be captured in a CUDA
graph whatever its output address. FMA contraction is disabled so the arithmetic rounds
exactly like the torch reference, and fp32 -> bf16 is the GPU's round-to-nearest-even
conversion (done by hand under the Triton interpreter, which truncates instead).

The seeds and scales are kernel arguments, or (`SweepOp.scalars`, `DEV`) read from an int64
device tensor (`kernels.sweep_op.DeviceScalars`): a kernel captured in a CUDA graph then
sweeps with whatever (seed, scale) was written there before the replay.

`pack_rademacher` / `unpack_rademacher` store a Rademacher direction at 1 bit per element:
the packed words are exactly the Philox outputs, so a sweep can read them instead of
recomputing them (PACKED1/PACKED2); on H100 regeneration is the faster of the two.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from kernels import philox
from kernels.sweep_op import SweepOp, scalar_values

BLOCK = 4096
# Globals a @triton.jit function reads must be constexpr.
STREAM_RADEMACHER = tl.constexpr(philox.STREAM_RADEMACHER)
STREAM_GAUSSIAN = tl.constexpr(philox.STREAM_GAUSSIAN)
STREAM_ROUNDING = tl.constexpr(philox.STREAM_ROUNDING)
ALIGN = 128
# Tensors of at least this many elements get a launch of their own (pointer as an argument);
# all others share one launch per dtype through a pointer table (multi-tensor apply).
OWN_LAUNCH_NUMEL = 1 << 62
GAUSSIAN_W = 128  # row width of Gaussian tiles: 128 (join-arranged, 16-byte loads) or 4
NUM_WARPS_RADEMACHER = 4
NUM_WARPS_GAUSSIAN = 4  # measured on H100 with fast sin/cos (benchmarks/README.md)
# Compiled for a GPU (not the Triton interpreter of the CPU tests): use the GPU's approximate
# sin/cos (MUFU; the interpreter has no libdevice) and its fp32 -> bf16 conversion (round to
# nearest even in one instruction; the interpreter truncates, so it rounds by hand).
COMPILED = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")
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
def _arrange4(a0, a1, a2, a3, G: tl.constexpr, W: tl.constexpr):
    """Values of the 4 members of each 4-element group ([G, W // 4] each) -> the [G, W] tile."""
    if W == 4:
        col = tl.arange(0, 4)[None, :]
        return tl.where(col == 0, a0, tl.where(col == 1, a1, tl.where(col == 2, a2, a3)))
    else:
        return tl.reshape(tl.join(tl.join(a0, a2), tl.join(a1, a3)), (G, W))


@triton.jit
def _quad_groups(gbase, G: tl.constexpr, W: tl.constexpr):
    """Index of the 4-element group of each [G, W // 4] slot, for the tile at gbase."""
    return (gbase // 4 + tl.arange(0, G)[:, None].to(tl.int64) * (W // 4)
            + tl.arange(0, W // 4)[None, :])


@triton.jit
def _z_tile(seed, packed_ptr, gbase, G: tl.constexpr, W: tl.constexpr, GAUSSIAN: tl.constexpr,
            PACKED: tl.constexpr):
    """z for global elements gbase + [0, G*W) as a [G, W] fp32 tile (gbase a multiple of W)."""
    if GAUSSIAN:
        # Box-Muller with the angle taken in [-pi, pi): cos(2 pi u) = -cos(2 pi (u - 1/2)) (and
        # sin alike) is the same z, and in that range the hardware's fast sin/cos are accurate
        # to ~2e-6 (1.5x faster perturb, 2.2x with two seeds on H100; benchmarks/README.md).
        r0, r1, r2, r3 = _philox_words(seed, _quad_groups(gbase, G, W), STREAM_GAUSSIAN)
        rad01 = -tl.sqrt(-2.0 * tl.log(_uniform(r0)))
        th01 = 6.283185307179586 * (_uniform(r1) - 0.5)
        rad23 = -tl.sqrt(-2.0 * tl.log(_uniform(r2)))
        th23 = 6.283185307179586 * (_uniform(r3) - 0.5)
        if COMPILED:
            c01, s01 = libdevice.fast_cosf(th01), libdevice.fast_sinf(th01)
            c23, s23 = libdevice.fast_cosf(th23), libdevice.fast_sinf(th23)
        else:
            c01, s01, c23, s23 = tl.cos(th01), tl.sin(th01), tl.cos(th23), tl.sin(th23)
        z = _arrange4(rad01 * c01, rad01 * s01, rad23 * c23, rad23 * s23, G, W)
    else:
        group = gbase // 128 + tl.arange(0, G).to(tl.int64)
        if PACKED:
            wp = packed_ptr + group * 4
            r0 = tl.load(wp).to(tl.uint32, bitcast=True)
            r1 = tl.load(wp + 1).to(tl.uint32, bitcast=True)
            r2 = tl.load(wp + 2).to(tl.uint32, bitcast=True)
            r3 = tl.load(wp + 3).to(tl.uint32, bitcast=True)
        else:
            r0, r1, r2, r3 = _philox_words(seed, group, STREAM_RADEMACHER)
        # [G, 4 words, 32 bits] -> [G, 128]: bit b of word w is element 32 w + b; its sign bit
        # moved to bit 31 and OR-ed into 1.0 gives z = -1 (bit 1) or +1 (bit 0) with no select
        # or conversion (a where-chain over the words made the 2-seed sweep ALU-bound: 65% of
        # copy bandwidth vs 84% this way, H100).
        words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (G, 4))
        to_top = 31 - tl.arange(0, 32).to(tl.uint32)[None, None, :]
        sign = (words[:, :, None] << to_top) & 0x80000000
        z = tl.reshape((sign | 0x3F800000).to(tl.float32, bitcast=True), (G, 128))
    return z


@triton.jit
def _rounding_uniforms(seed, gbase, G: tl.constexpr, W: tl.constexpr):
    """The stochastic-rounding uniform of each element of the tile (4 per Philox call)."""
    r0, r1, r2, r3 = _philox_words(seed, _quad_groups(gbase, G, W), STREAM_ROUNDING)
    return _arrange4(_uniform(r0), _uniform(r1), _uniform(r2), _uniform(r3), G, W)


@triton.jit
def _round_to(y, elem: tl.constexpr):
    """fp32 -> `elem`, round to nearest even (bf16 by hand in the interpreter, which truncates)."""
    if elem == tl.bfloat16 and not COMPILED:
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
            y = _stochastic_round(y, _rounding_uniforms(seed1, gbase, G, W), MANT, EMIN)
        x = _round_to(y, elem).to(tl.float32)
    if HAS_C:
        if Z2_SAME:
            z2 = z1
        else:
            z2 = _z_tile(seed2, packed2, gbase, G, W, GAUSSIAN, PACKED2)
        x = x + scale_c * z2
    tl.store(out_ptr + local, _round_to(x, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scalars(scal_ptr, seed1, seed2, scale_a, keep, coef, scale_c, DEV: tl.constexpr):
    """The sweep's scalars: the kernel arguments, or (DEV) the words of a DeviceScalars tensor,
    which a CUDA graph replay reads afresh."""
    if DEV:
        seed1 = tl.load(scal_ptr)
        seed2 = tl.load(scal_ptr + 1)
        scale_a = tl.load(scal_ptr + 2).to(tl.int32).to(tl.float32, bitcast=True)
        keep = tl.load(scal_ptr + 3).to(tl.int32).to(tl.float32, bitcast=True)
        coef = tl.load(scal_ptr + 4).to(tl.int32).to(tl.float32, bitcast=True)
        scale_c = tl.load(scal_ptr + 5).to(tl.int32).to(tl.float32, bitcast=True)
    return seed1, seed2, scale_a, keep, coef, scale_c


@triton.jit
def _sweep_one(x_ptr, out_ptr, n, gstart, shift, seed1, seed2, packed1, packed2,
               scale_a, keep, coef, scale_c, scal_ptr, W: tl.constexpr, BLOCK_: tl.constexpr,
               GAUSSIAN: tl.constexpr, HAS_A: tl.constexpr, HAS_B: tl.constexpr,
               HAS_C: tl.constexpr, Z2_SAME: tl.constexpr, SR: tl.constexpr,
               PACKED1: tl.constexpr, PACKED2: tl.constexpr, MANT: tl.constexpr,
               EMIN: tl.constexpr, DEV: tl.constexpr, ALIGNED: tl.constexpr):
    tile = tl.program_id(0).to(tl.int64)
    seed1, seed2, scale_a, keep, coef, scale_c = _scalars(scal_ptr, seed1, seed2, scale_a, keep,
                                                          coef, scale_c, DEV)
    _body(x_ptr, out_ptr, n, gstart, shift, tile, seed1, seed2, packed1, packed2,
          scale_a, keep, coef, scale_c, W, BLOCK_, GAUSSIAN, HAS_A, HAS_B, HAS_C, Z2_SAME, SR,
          PACKED1, PACKED2, MANT, EMIN)


@triton.jit
def _sweep_group(like_ptr, ptr_tab, n_tab, gstart_tab, shift_tab, first_tab, out_tab, tile_tab,
                 seed1, seed2, packed1, packed2, scale_a, keep, coef, scale_c, scal_ptr,
                 W: tl.constexpr, BLOCK_: tl.constexpr, GAUSSIAN: tl.constexpr,
                 HAS_A: tl.constexpr, HAS_B: tl.constexpr, HAS_C: tl.constexpr,
                 Z2_SAME: tl.constexpr, SR: tl.constexpr, PACKED1: tl.constexpr,
                 PACKED2: tl.constexpr, MANT: tl.constexpr, EMIN: tl.constexpr,
                 DEV: tl.constexpr, ALIGNED: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(tile_tab + pid)
    x_addr = tl.load(ptr_tab + t)
    out_addr = tl.load(out_tab + t)
    n = tl.load(n_tab + t)
    shift = tl.load(shift_tab + t)
    x_ptr = x_addr.to(tl.pointer_type(like_ptr.dtype.element_ty))
    out_ptr = out_addr.to(tl.pointer_type(like_ptr.dtype.element_ty))
    if ALIGNED:
        # Every tensor of this table starts 16-byte aligned, in and out, and its numel and
        # start shift are multiples of 16 (checked on the host): the hints that let the
        # loads and stores go 16 bytes wide, as they do for a pointer argument.
        x_ptr = tl.multiple_of(x_ptr, 16)
        out_ptr = tl.multiple_of(out_ptr, 16)
        n = tl.multiple_of(n, 16)
        shift = tl.multiple_of(shift, 16)
    tile = (pid - tl.load(first_tab + t)).to(tl.int64)
    seed1, seed2, scale_a, keep, coef, scale_c = _scalars(scal_ptr, seed1, seed2, scale_a, keep,
                                                          coef, scale_c, DEV)
    _body(x_ptr, out_ptr, n, tl.load(gstart_tab + t), shift, tile,
          seed1, seed2, packed1, packed2, scale_a, keep, coef, scale_c, W, BLOCK_, GAUSSIAN,
          HAS_A, HAS_B, HAS_C, Z2_SAME, SR, PACKED1, PACKED2, MANT, EMIN)


_DUMMIES: dict[torch.device, torch.Tensor] = {}


def _args(op: SweepOp, x: torch.Tensor, gaussian: bool) -> tuple[list, dict]:
    if op.stochastic and x.dtype not in (torch.bfloat16, torch.float16):
        op = SweepOp(**{**op.__dict__, "stochastic": False})
    if x.device not in _DUMMIES:
        _DUMMIES[x.device] = torch.zeros(6, dtype=torch.int64, device=x.device)
    dummy = _DUMMIES[x.device]
    dev = op.scalars is not None
    seed1, seed2, *values = (0, 0, 0.0, 0.0, 0.0, 0.0) if dev else scalar_values(op)
    scalars = [seed1, seed2,
               dummy if op.packed1 is None else op.packed1,
               dummy if op.packed2 is None else op.packed2,
               *values, op.scalars if dev else dummy]
    meta = dict(W=GAUSSIAN_W if gaussian else 128, BLOCK_=BLOCK,
                num_warps=NUM_WARPS_GAUSSIAN if gaussian else NUM_WARPS_RADEMACHER,
                GAUSSIAN=gaussian, HAS_A=op.restore_scale is not None, HAS_B=op.coef is not None,
                HAS_C=op.perturb_scale is not None, Z2_SAME=op.seed2 is None and op.packed2 is None,
                SR=op.stochastic and op.coef is not None, PACKED1=op.packed1 is not None,
                PACKED2=op.packed2 is not None, MANT=_MANTISSA[x.dtype], EMIN=_MIN_EXP[x.dtype],
                DEV=dev, enable_fp_fusion=False)
    return scalars, meta


def _aligned(x: torch.Tensor, off: int, dst: torch.Tensor) -> bool:
    """Whether x (and its output) can be swept with 16-byte loads and stores: both start on a
    16-byte boundary, and its numel and start shift within the Philox alignment are
    multiples of 16 elements."""
    return (x.data_ptr() % 16 == 0 and dst.data_ptr() % 16 == 0 and x.numel() % 16 == 0
            and (off % ALIGN) % 16 == 0)


class SweepPlan:
    """How a list of tensors is swept: which get a launch of their own, and the pointer table
    of each group sharing one. Built from the tensors' addresses, so valid while none of them
    moves; a caller that sweeps the same tensors again (the engine, every step) keeps it and
    skips the per-tensor work on the host."""

    def __init__(self, tensors: list[torch.Tensor], offsets: list[int],
                 out: list[torch.Tensor] | None = None) -> None:
        todo = [(x, off, x if out is None else out[i])
                for i, (x, off) in enumerate(zip(tensors, offsets)) if x.numel() > 0]
        self.own: list[tuple[torch.Tensor, torch.Tensor, int, int, int]] = []
        grouped: dict[tuple, list[tuple[torch.Tensor, int, torch.Tensor]]] = {}
        for x, off, dst in todo:
            if len(todo) == 1 or x.numel() >= OWN_LAUNCH_NUMEL:
                self.own.append((x, dst, off - off % ALIGN, off % ALIGN,
                                 triton.cdiv(x.numel() + off % ALIGN, BLOCK)))
            else:
                grouped.setdefault((x.dtype, _aligned(x, off, dst)), []).append((x, off, dst))
        self.groups = [(group[0][0], *_group_tables(group), aligned)
                       for (_, aligned), group in grouped.items()]


def plan(tensors: list[torch.Tensor], offsets: list[int],
         out: list[torch.Tensor] | None = None) -> SweepPlan:
    return SweepPlan(tensors, offsets, out)


def sweep(tensors: list[torch.Tensor], offsets: list[int], op: SweepOp, dist: str,
          out: list[torch.Tensor] | None = None, plan: SweepPlan | None = None) -> None:
    """Apply `op` to each contiguous tensor whose z starts at `offsets[i]` in the flat space:
    in place, or into `out[i]` (same shape and dtype) leaving the inputs untouched. `plan`:
    a `SweepPlan` of these same tensors (and outputs), kept by the caller.

    One launch for all the tensors of one dtype (multi-tensor apply through a pointer table,
    two when some tensors are not 16-byte aligned), except that a single tensor, or one of at
    least `OWN_LAUNCH_NUMEL` elements, gets a launch of its own with its pointer as an
    argument (no table: nothing to build, which also keeps a single-tensor sweep capturable
    in a CUDA graph whatever its output address)."""
    gaussian = dist == "gaussian"
    plan = SweepPlan(tensors, offsets, out) if plan is None else plan
    for x, dst, gstart, shift, tiles in plan.own:
        scalars, meta = _args(op, x, gaussian)
        _sweep_one[(tiles,)](x, dst, x.numel(), gstart, shift, *scalars, ALIGNED=False, **meta)
    for like, table, tile_tab, n_tiles, aligned in plan.groups:
        scalars, meta = _args(op, like, gaussian)
        _sweep_group[(n_tiles,)](like, *table, tile_tab, *scalars, ALIGNED=aligned, **meta)


_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor, int]] = {}
_MAX_TABLES = 256


def _group_tables(group: list[tuple[torch.Tensor, int, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Device tables (pointer, numel, gstart, shift, first tile, output pointer; tile ->
    tensor) for a group, cached by address and layout so a sweep never waits on a
    host-to-device copy."""
    key = tuple((x.data_ptr(), x.numel(), off, d.data_ptr()) for x, off, d in group)
    key += (str(group[0][0].device),)
    if key not in _TABLES:
        if len(_TABLES) >= _MAX_TABLES:  # fresh output buffers every call: do not grow forever
            _TABLES.clear()
        device = group[0][0].device
        tiles = [triton.cdiv(x.numel() + off % ALIGN, BLOCK) for x, off, _ in group]
        first = [sum(tiles[:i]) for i in range(len(tiles))]
        table = torch.tensor([[x.data_ptr(), x.numel(), off - off % ALIGN, off % ALIGN, f,
                               d.data_ptr()] for (x, off, d), f in zip(group, first)],
                             dtype=torch.int64)
        tile_tab = torch.repeat_interleave(torch.arange(len(group), dtype=torch.int32),
                                           torch.tensor(tiles))
        _TABLES[key] = (table.t().contiguous().to(device), tile_tab.to(device), sum(tiles))
    return _TABLES[key]


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
