"""Sweep bandwidth vs a plain copy, on the tensor layout of OPT-13B decoder layers (bf16).

A sweep reads and writes every weight once, so its floor is the time of a copy of the same
bytes. Prints one markdown table: time, effective bandwidth (bytes read + written) and the
share of copy bandwidth, for the engine's sweeps (Rademacher / Gaussian; perturb, move, the
fused restore+update+next-perturb; packed directions vs regeneration) and for the reference
way (`torch.normal` per tensor, then add).

    python benchmarks/sweep_bandwidth.py --layers 8
"""

from __future__ import annotations

import argparse

import torch
import triton.testing

from kernels import sweep as K
from kernels.sweep_op import SweepOp


def layer_tensors(layers: int, hidden: int, ffn: int, dtype) -> list[torch.Tensor]:
    shapes = []
    for _ in range(layers):
        shapes += [(hidden, hidden), (hidden,)] * 4                 # q, k, v, out_proj
        shapes += [(ffn, hidden), (ffn,), (hidden, ffn), (hidden,)]  # fc1, fc2
        shapes += [(hidden,)] * 4                                   # two layer norms
    return [torch.randn(s, device="cuda", dtype=dtype) * 0.02 for s in shapes]


def bench(fn, reps: int = 20) -> float:
    return triton.testing.do_bench(fn, warmup=3 * reps, rep=20 * reps, return_mode="median")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    tensors = layer_tensors(args.layers, 5120, 20480, torch.bfloat16)
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += t.numel()
    nbytes = 2 * total * tensors[0].element_size()          # read + write
    src = torch.randn(total, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    rows: list[tuple[str, float]] = [
        ("copy (torch, one flat buffer)", bench(lambda: dst.copy_(src))),
        ("in-place scale (torch._foreach_mul_)", bench(lambda: torch._foreach_mul_(tensors, 1.0))),
    ]
    del src, dst
    words = K.pack_rademacher(1, -(-total // 128), "cuda")
    step = dict(seed1=1, restore_scale=1e-3, coef=1e-6, perturb_scale=1e-3, seed2=2)
    cases = {
        "rademacher perturb": ("rademacher", SweepOp(seed1=1, perturb_scale=1e-3)),
        "rademacher move (restore+perturb)":
            ("rademacher", SweepOp(seed1=1, restore_scale=1e-3, perturb_scale=-1e-3)),
        "rademacher restore+update+next perturb": ("rademacher", SweepOp(**step)),
        "rademacher restore+update(stochastic rounding)+next":
            ("rademacher", SweepOp(**step, stochastic=True)),
        "rademacher perturb, packed 1-bit direction":
            ("rademacher", SweepOp(seed1=1, packed1=words, perturb_scale=1e-3)),
        "gaussian perturb": ("gaussian", SweepOp(seed1=1, perturb_scale=1e-3)),
        "gaussian move (restore+perturb)":
            ("gaussian", SweepOp(seed1=1, restore_scale=1e-3, perturb_scale=-1e-3)),
        "gaussian restore+update+next perturb": ("gaussian", SweepOp(**step)),
    }
    for name, (dist, op) in cases.items():
        rows.append((f"zoexp {name}", bench(lambda: K.sweep(tensors, offsets, op, dist))))
    pack_ms = bench(lambda: K.pack_rademacher(1, -(-total // 128), "cuda"))

    def reference_sweep():
        torch.manual_seed(1)
        for t in tensors:
            z = torch.normal(0, 1, size=t.shape, device=t.device, dtype=t.dtype)
            t.data = t.data + 1e-3 * z

    rows.append(("reference: torch.normal per tensor, then add", bench(reference_sweep, reps=5)))
    copy_ms = rows[0][1]
    print(f"\n{torch.cuda.get_device_name()}: {total / 1e9:.2f} B bf16 elements in {len(tensors)} "
          f"tensors ({args.layers} OPT-13B decoder layers); torch {torch.__version__}, triton "
          f"{triton.__version__}\n")
    print("| sweep | ms | GB/s (read+write) | % of copy | ms scaled to 12.85 B params |")
    print("|---|---:|---:|---:|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {nbytes / ms / 1e6:.0f} | {100 * copy_ms / ms:.0f}% | "
              f"{ms * 12.85e9 / total:.1f} |")
    print("\nkernel variants (ms):\n\n| GAUSSIAN_W | num_warps | BLOCK | gaussian perturb | gaussian move "
          "| rademacher restore+update(SR)+next |\n|---:|---:|---:|---:|---:|---:|")
    for gw, warps, block in [(128, 8, 4096), (128, 4, 4096), (4, 4, 4096), (128, 4, 2048)]:
        K.GAUSSIAN_W, K.NUM_WARPS_GAUSSIAN, K.NUM_WARPS_RADEMACHER, K.BLOCK = gw, warps, warps, block
        times = [bench(lambda: K.sweep(tensors, offsets, cases[name][1], cases[name][0]))
                 for name in ("gaussian perturb", "gaussian move (restore+perturb)",
                              "rademacher restore+update(stochastic rounding)+next")]
        print(f"| {gw} | {warps} | {block} | " + " | ".join(f"{t:.2f}" for t in times) + " |")
    print(f"\npacking one Rademacher direction (1 bit/param, {words.numel() * 4 / 1e6:.0f} MB): "
          f"{pack_ms:.2f} ms")


if __name__ == "__main__":
    main()
