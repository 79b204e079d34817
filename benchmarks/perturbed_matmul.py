"""Can the perturbation live inside the matmul? y = x (W + s z)^T with z made in the weight loads.

An in-place MeZO step costs two forwards plus two weight sweeps, which at OPT-13B shape on an
H100 is >= 1.37x two forwards however fast the sweeps are (benchmarks/README.md). The only
way under that is to never write the perturbed weights: each linear layer generates its
Rademacher signs while it loads W tiles (Philox on (seed, global element index), the same z as
`kernels.sweep`), so a step costs two *perturbed* forwards plus one update sweep. That pays
off only if the perturbed GEMM is almost as fast as cuBLAS. This measures it, per OPT-13B
linear shape at batch 16 x 64 tokens, in one run:

* cuBLAS (`F.linear`) on W;
* the same Triton GEMM without the perturbation (Triton's own GEMM speed at this shape);
* the Triton GEMM with z generated in the weight loads;

and checks the fused output against `F.linear` on weights perturbed by the sweep kernel.
From the measured per-shape overheads it projects the MeZO step / two forwards ratio.

    python benchmarks/perturbed_matmul.py [--tokens 1024] [--forward-ms 46.8] [--sweep-ms 18.2]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.sweep import STREAM_RADEMACHER, _philox_words

CONFIGS = [
    triton.Config({"BM": bm, "BN": bn, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 128, 8, 3), (128, 256, 8, 3), (128, 128, 4, 4), (64, 256, 8, 3),
                         (128, 64, 4, 4), (256, 128, 8, 3)]
]


@triton.autotune(configs=CONFIGS, key=["M", "N", "K", "PERTURB"])
@triton.jit
def _perturbed_linear(x_ptr, w_ptr, y_ptr, M, N, K, offset, seed, scale, PERTURB: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """y[M, N] = x[M, K] @ (W + scale * z)^T, K-tiles of 128 = one Philox call per W row."""
    BK: tl.constexpr = 128
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    col = rk[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(x_ptr + rm[:, None] * K + (k0 + rk)[None, :], mask=rm[:, None] < M, other=0.0)
        w = tl.load(w_ptr + rn[:, None] * K + (k0 + rk)[None, :], mask=rn[:, None] < N, other=0.0)
        if PERTURB:
            group = (offset + rn.to(tl.int64) * K + k0) // 128
            r0, r1, r2, r3 = _philox_words(seed, group, STREAM_RADEMACHER)
            word = tl.where(col < 32, r0[:, None], tl.where(col < 64, r1[:, None],
                            tl.where(col < 96, r2[:, None], r3[:, None])))
            bit = (word >> (col & 31).to(tl.uint32)) & 1
            w = (w.to(tl.float32) + scale * (1.0 - 2.0 * bit.to(tl.float32))).to(w.dtype)
        acc = tl.dot(a, tl.trans(w), acc)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def perturbed_linear(x: torch.Tensor, w: torch.Tensor, offset: int, seed: int, scale: float,
                     perturb: bool = True) -> torch.Tensor:
    M, K = x.shape
    N = w.shape[0]
    assert K % 128 == 0 and offset % 128 == 0, "K and the offset must be multiples of 128"
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
    _perturbed_linear[grid](x, w, y, M, N, K, offset, seed, scale, PERTURB=perturb)
    return y


def time_ms(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="batch x sequence length")
    parser.add_argument("--forward-ms", type=float, default=46.8, help="measured OPT-13B forward")
    parser.add_argument("--sweep-ms", type=float, default=18.2, help="measured full-model sweep")
    args = parser.parse_args()
    from kernels.sweep import sweep
    from kernels.sweep_op import SweepOp

    dev, dt = "cuda", torch.bfloat16
    seed, scale, offset = 1234, 1e-3, 128 * 977
    # OPT-13B linears per layer: q, k, v, out (5120 x 5120), fc1 (20480 x 5120), fc2 (5120 x 20480)
    shapes = [("qkv/out 5120x5120", 5120, 5120, 4), ("fc1 20480x5120", 20480, 5120, 1),
              ("fc2 5120x20480", 5120, 20480, 1)]
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("| linear (N x K), M = %d | cuBLAS ms | Triton GEMM ms | Triton perturbed ms | perturbed / cuBLAS |" % args.tokens)
    print("|---|---:|---:|---:|---:|")
    extra_per_layer = 0.0
    cublas_per_layer = 0.0
    for name, N, K, count in shapes:
        torch.manual_seed(0)
        x = torch.randn(args.tokens, K, device=dev, dtype=dt)
        w = torch.randn(N, K, device=dev, dtype=dt) * 0.02
        # correctness: the sweep kernel's perturbed weights through cuBLAS
        wp = w.clone()
        sweep([wp], [offset], SweepOp(seed1=seed, perturb_scale=scale), "rademacher")
        ref = F.linear(x, wp)
        out = perturbed_linear(x, w, offset, seed, scale)
        err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        assert err < 1e-2, f"{name}: fused output differs from the swept weights' (rel {err:.2e})"
        t_cublas = time_ms(lambda: F.linear(x, w))
        t_plain = time_ms(lambda: perturbed_linear(x, w, offset, seed, scale, perturb=False))
        t_fused = time_ms(lambda: perturbed_linear(x, w, offset, seed, scale))
        print(f"| {name} | {t_cublas:.3f} | {t_plain:.3f} | {t_fused:.3f} | {t_fused / t_cublas:.2f} |")
        extra_per_layer += count * (t_fused - t_cublas)
        cublas_per_layer += count * t_cublas
    layers = 40
    fwd = args.forward_ms + layers * extra_per_layer
    print(f"\nlinears of one layer: cuBLAS {cublas_per_layer:.2f} ms, perturbed +{extra_per_layer:.2f} ms; "
          f"x {layers} layers")
    print(f"projected perturbed forward: {fwd:.1f} ms (measured plain forward {args.forward_ms} ms)")
    print(f"projected MeZO step (two perturbed forwards + one update sweep of {args.sweep_ms} ms): "
          f"{2 * fwd + args.sweep_ms:.1f} ms = {(2 * fwd + args.sweep_ms) / (2 * args.forward_ms):.2f}x two forwards")


if __name__ == "__main__":
    main()
