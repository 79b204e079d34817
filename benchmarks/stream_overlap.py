"""Can the weight sweeps hide under the forward passes? Measured three ways, OPT-13B shape.

An in-place MeZO step is two forwards plus two sweeps (>= 1.36x two forwards even at copy
speed). A sweep is memory-bound, a forward tensor-core-bound, so running them concurrently
could hide the sweeps. This measures, at OPT-13B shape (random bf16 weights, batch 16 x 64):

1. a whole-model Rademacher move launched together with a forward on two streams (equal
   priority, then the forward on a high-priority stream): how much of the sweep is hidden;
   then the move confined to P SMs (below) with cuBLAS told to leave those SMs free
   (`torch._C._set_sm_carveout_experimental`, honoured by cuBLASLt: run with
   TORCH_BLAS_PREFER_CUBLASLT=1), against the full-grid move followed by the forward;
2. what a sweep confined to P programs (a persistent version of the sweep kernel, each
   program looping over every P-th tile, i.e. P SMs) moves per program, next to a plain
   copy with the same tiling: the rate a few SMs can sweep at;
3. the schedule a layer-pipelined step would run: each of the step's two sweeps on a side
   stream, layer by layer with an event per layer, while the next forward waits in each
   decoder layer's pre-hook for that layer's event only; on the full grid or on P
   programs, against the plain in-place step in the same run (same kernels and tiles, so
   the same weights bit for bit).

    TORCH_BLAS_PREFER_CUBLASLT=1 PYTHONPATH=. python benchmarks/stream_overlap.py
"""

from __future__ import annotations

import argparse
import statistics

import torch
import triton
import triton.language as tl

from kernels import sweep as kernels
from kernels.sweep_op import SweepOp
from mezo_step import SolverSteps
from zoexp.bench import DTYPES, add_workload_args, random_batch_loss, time_ms
from zoexp.perturb import PerturbationEngine

CHUNK = 1 << 28
GROUP_MAX_NUMEL = 1 << 22  # as measured: tensors below this went through the grouped sweep
MOVE = SweepOp(seed1=3, restore_scale=1e-3, perturb_scale=-1e-3)
BLOCK, WARPS = 32768, 16  # the best per-program rate of 8-32 warps x 8-32 K elements (H100)


@triton.jit
def _sweep_strided(x_ptr, out_ptr, n, gstart, shift, n_tiles, seed1, seed2, packed1, packed2,
                   scale_a, keep, coef, scale_c, scal_ptr, W: tl.constexpr,
                   BLOCK_: tl.constexpr, GAUSSIAN: tl.constexpr, HAS_A: tl.constexpr,
                   HAS_B: tl.constexpr, HAS_C: tl.constexpr, Z2_SAME: tl.constexpr,
                   SR: tl.constexpr, PACKED1: tl.constexpr, PACKED2: tl.constexpr,
                   MANT: tl.constexpr, EMIN: tl.constexpr, DEV: tl.constexpr):
    """The sweep kernel's own body on a fixed number of programs (persistent)."""
    zero = tl.program_id(0).to(tl.int64) * 0
    seed1, seed2, scale_a, keep, coef, scale_c = kernels._scalars(
        scal_ptr, seed1, seed2, scale_a, keep, coef, scale_c, DEV)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        kernels._body(x_ptr, out_ptr, n, gstart, shift, zero + tile, seed1, seed2, packed1,
                      packed2, scale_a, keep, coef, scale_c, W, BLOCK_, GAUSSIAN, HAS_A, HAS_B,
                      HAS_C, Z2_SAME, SR, PACKED1, PACKED2, MANT, EMIN)


@triton.jit
def _copy_strided(x_ptr, n, n_tiles, BLOCK_: tl.constexpr):
    """Read and rewrite every element, tiled and persistent like `_sweep_strided`."""
    zero = tl.program_id(0).to(tl.int64) * 0
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        idx = (zero + tile) * BLOCK_ + tl.arange(0, BLOCK_)
        tl.store(x_ptr + idx, tl.load(x_ptr + idx, mask=idx < n), mask=idx < n)


def sweep_on(programs: int | None, tensors, offsets, op: SweepOp, dist: str) -> None:
    """`kernels.sweep.sweep`, with each large tensor on at most `programs` programs."""
    if programs is None:
        return kernels.sweep(tensors, offsets, op, dist)
    small = [(x, off) for x, off in zip(tensors, offsets) if x.numel() < GROUP_MAX_NUMEL]
    for x, off in zip(tensors, offsets):
        if x.numel() >= GROUP_MAX_NUMEL:
            scalars, meta = kernels._args(op, x, dist == "gaussian")
            shift = off % kernels.ALIGN
            tiles = triton.cdiv(x.numel() + shift, BLOCK)
            _sweep_strided[(min(tiles, programs),)](x, x, x.numel(), off - shift, shift, tiles,
                                                    *scalars, **{**meta, "BLOCK_": BLOCK,
                                                                 "num_warps": WARPS})
    if small:
        kernels.sweep([x for x, _ in small], [off for _, off in small], op, dist)


class LayerPipelinedSweeps:
    """Replaces an engine's sweep: parameters outside the decoder layers are swept at once on
    the current stream; each layer's on a side stream, and the next forward waits (decoder
    layer pre-hook) for that layer's event only."""

    def __init__(self, engine: PerturbationEngine, layers, programs: int | None) -> None:
        self.engine, self.programs = engine, programs
        index = {id(p): i for i, p in enumerate(engine.params)}
        self.groups = [[index[id(p)] for p in layer.parameters() if id(p) in index]
                       for layer in layers]
        inside = {i for group in self.groups for i in group}
        self.rest = [i for i in range(len(engine.params)) if i not in inside]
        self.side = torch.cuda.Stream()
        self.events: list[torch.cuda.Event | None] = [None] * len(layers)
        self.hooks = [layer.register_forward_pre_hook(self._wait(k)) for k, layer in enumerate(layers)]

    def _wait(self, k: int):
        def hook(module, args) -> None:
            if self.events[k] is not None:
                torch.cuda.current_stream().wait_event(self.events[k])
                self.events[k] = None
        return hook

    def __call__(self, op: SweepOp) -> None:
        raw, offsets, dist = self.engine._raw, self.engine.offsets, self.engine.dist
        kernels.sweep([raw[i] for i in self.rest], [offsets[i] for i in self.rest], op, dist)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            for k, group in enumerate(self.groups):
                sweep_on(self.programs, [raw[i] for i in group], [offsets[i] for i in group], op, dist)
                self.events[k] = torch.cuda.Event()
                self.events[k].record(self.side)

    def close(self) -> None:
        torch.cuda.current_stream().wait_stream(self.side)
        for hook in self.hooks:
            hook.remove()


def concurrently(first, second, first_priority: int = 0, second_priority: int = 0) -> None:
    """Launch `first` and `second` on two new streams, both after the current stream's work."""
    main = torch.cuda.current_stream()
    streams = [torch.cuda.Stream(priority=first_priority), torch.cuda.Stream(priority=second_priority)]
    for stream, fn in zip(streams, (first, second)):
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            fn()
    for stream in streams:
        main.wait_stream(stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser)
    parser.add_argument("--programs", type=int, nargs="+", default=[16, 32, 66, 132])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    model, loss = random_batch_loss(args.model, DTYPES[args.dtype], "cuda", args.batch, args.seq)
    n = sum(p.numel() for p in model.parameters())
    flat = torch.empty(n, dtype=DTYPES[args.dtype], device="cuda").normal_(0, 0.02)  # its own bytes
    chunks = list(flat.split(CHUNK))
    offsets = [i * CHUNK for i in range(len(chunks))]

    def median_ms(fn, repeats: int = 10) -> float:
        return statistics.median(time_ms(fn, repeats, warmup=3))

    def move(programs: int | None = None) -> None:
        sweep_on(programs, chunks, offsets, MOVE, "rademacher")

    def copy(programs: int) -> None:
        for c in chunks:
            tiles = triton.cdiv(c.numel(), BLOCK)
            _copy_strided[(min(tiles, programs),)](c, c.numel(), tiles, BLOCK_=BLOCK, num_warps=WARPS)

    forward, swept = median_ms(loss), median_ms(move)
    together = median_ms(lambda: concurrently(move, loss))
    prioritised = median_ms(lambda: concurrently(move, loss, second_priority=-1))
    total = forward + swept
    gb = 2 * flat.numel() * flat.element_size() / 1e9
    print(f"{torch.cuda.get_device_name()}, {args.model} shape ({n / 1e9:.2f} B params, {args.dtype}), "
          f"batch {args.batch} x {args.seq}, torch {torch.__version__}\n")
    print(f"1. forward {forward:.1f} ms, Rademacher move {swept:.1f} ms, sum {total:.1f}; concurrent "
          f"{together:.1f} ms (hidden {(total - together) / swept:.0%} of the sweep); forward on a "
          f"high-priority stream {prioritised:.1f} ms (hidden {(total - prioritised) / swept:.0%})\n")
    carveout = getattr(torch._C, "_set_sm_carveout_experimental", None)
    if carveout is not None:
        print("   The sweep on P programs launched first, then the forward, with cuBLAS told to leave "
              "those P SMs free (carveout):\n")
        print("| P | forward (carveout) ms | sweep ms | serial sum | together ms | vs full-grid sweep "
              "then forward |\n|---:|---:|---:|---:|---:|---:|")
        for p in args.programs:
            if p >= 132:
                continue
            carveout(p)
            fwd, limited = median_ms(loss), median_ms(lambda: move(p), 5)
            both = median_ms(lambda: concurrently(lambda: move(p), loss), 5)
            carveout(None)
            print(f"| {p} | {fwd:.1f} | {limited:.1f} | {fwd + limited:.1f} | {both:.1f} | "
                  f"{both / total:.2f} |", flush=True)
        print()

    print(f"2. A sweep on P programs ({BLOCK} elements x {WARPS} warps per program), "
          f"{gb:.1f} GB read + written\n")
    print("| P | Rademacher move ms | GB/s per program | copy ms | GB/s per program |")
    print("|---:|---:|---:|---:|---:|")
    for p in args.programs:
        moved, copied = median_ms(lambda: move(p), 3), median_ms(lambda: copy(p), 3)
        print(f"| {p} | {moved:.1f} | {gb / moved * 1e3 / p:.1f} | {copied:.1f} | "
              f"{gb / copied * 1e3 / p:.1f} |", flush=True)
    chunks.clear()  # frees the flat buffer for the steps
    del flat

    params = [p for p in model.parameters() if p.requires_grad]
    layers = model.model.decoder.layers
    print(f"\n3. In-place Rademacher MeZO step (2 sweeps), two forwards = {2 * forward:.1f} ms. "
          "Carveout: cuBLAS told to leave P SMs free (torch._C._set_sm_carveout_experimental; "
          "honoured by cuBLASLt, so run with TORCH_BLAS_PREFER_CUBLASLT=1)\n")
    print("| schedule | carveout | forward ms | step ms | / two forwards |\n|---|---:|---:|---:|---:|")
    for programs in ["plain", None, *args.programs]:
        carves = [None] if not isinstance(programs, int) or carveout is None else [None, programs]
        for carve in carves:
            if carve is not None:
                carveout(carve)
            fwd = forward if carve is None else median_ms(loss)
            steps = SolverSteps(params, loss, "rademacher", exact=False)
            pipeline = None
            if programs != "plain":
                pipeline = LayerPipelinedSweeps(steps.solver.engine, layers, programs)
                steps.solver.engine._sweep = pipeline
            step = statistics.median(time_ms(steps.step, args.steps))
            steps.close()
            if pipeline is not None:
                pipeline.close()
            if carve is not None:
                carveout(None)
            name = ("plain (both sweeps on the full grid, between the forwards)" if programs == "plain"
                    else "layer-pipelined side stream, "
                    + ("full grid" if programs is None else f"{programs} programs"))
            print(f"| {name} | {carve or '-'} | {fwd:.1f} | {step:.1f} | {step / (2 * forward):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
