"""Can the weight sweeps hide under the forward passes? A sweep on a second CUDA stream.

An in-place MeZO step is two forwards plus two sweeps; if a sweep (memory-bound) ran
concurrently with a forward (tensor-core-bound), a layer-pipelined step could hide it. This
times, at OPT-13B shape (random bf16 weights, batch 16 x 64), a forward alone, a Rademacher
move over as many elements alone, and both launched together on two streams (equal priority,
then the forward on a high-priority stream), and prints how much of the sweep was hidden.

    PYTHONPATH=. python benchmarks/stream_overlap.py
"""

from __future__ import annotations

import argparse
import statistics

import torch

from kernels.sweep import sweep
from kernels.sweep_op import SweepOp
from zoexp.bench import DTYPES, add_workload_args, random_batch_loss, time_ms

CHUNK = 1 << 28
MOVE = SweepOp(seed1=3, restore_scale=1e-3, perturb_scale=-1e-3)


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
    args = parser.parse_args()

    model, loss = random_batch_loss(args.model, DTYPES[args.dtype], "cuda", args.batch, args.seq)
    n = sum(p.numel() for p in model.parameters())
    flat = torch.empty(n, dtype=DTYPES[args.dtype], device="cuda").normal_(0, 0.02)  # its own bytes
    chunks = list(flat.split(CHUNK))
    offsets = [i * CHUNK for i in range(len(chunks))]

    def move() -> None:
        sweep(chunks, offsets, MOVE, "rademacher")

    def median_ms(fn) -> float:
        return statistics.median(time_ms(fn, 10, warmup=3))

    forward, swept = median_ms(loss), median_ms(move)
    together = median_ms(lambda: concurrently(move, loss))
    prioritised = median_ms(lambda: concurrently(move, loss, second_priority=-1))
    total = forward + swept
    print(f"forward {forward:.1f} ms, sweep {swept:.1f} ms, sum {total:.1f}; concurrent {together:.1f} ms "
          f"(hidden {(total - together) / swept:.0%} of the sweep); forward high-priority stream "
          f"{prioritised:.1f} ms (hidden {(total - prioritised) / swept:.0%})")


if __name__ == "__main__":
    main()
