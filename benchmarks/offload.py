"""The offloaded step (hardware.offload=cpu) against the in-GPU step and the transfer bound.

    python benchmarks/offload.py                      # OPT-30B shape, bf16, on one GPU (< 5 min on an H200)
    python benchmarks/offload.py --quick              # a tiny OPT on the CPU (simulated offload): the script runs

One random-weight model and one random batch per shape. For MeZO and 1.5-SPSA (n_perts 8) at
each batch shape it times
* the in-GPU step: the model in GPU memory, the solver's sequential probes (what a run
  without offload does), and its peak GPU memory;
* the offloaded step: the *same* weights moved block by block into pinned host memory
  (zoexp.offload.HostOffload.place), layer-major probes, deferred updates, written back --
  and its peak GPU memory, host-to-device and device-to-host bytes per step;
and measures the pinned host-to-device bandwidth (one block's buffer, copied on a side stream),
device-to-host, and both directions at once. The bound of a step is
max(compute of the in-GPU step, bytes uploaded per step / host-to-device bandwidth); the
ratio printed is the offloaded step over that bound.

"Compute of the in-GPU step" is measured, not modelled: the whole model is built in GPU
memory first (random weights generated on the GPU: seconds), timed there, then moved block by
block to pinned host memory and timed offloaded -- the same weights, batch and kernels. This
needs the model to fit the GPU once: OPT-30B in bf16 is 60 GB, which an H200 (139 GiB) holds
next to a 256 x 64 step of either solver. (For a model that does not, the honest substitute
would be timing the same layer shape with fewer layers and extrapolating per layer; not
needed at OPT-30B on an H200, so not implemented.)

The learning rate is tiny but not zero, so every step has an update to apply and a block to
write back, as in training (lr = 0 would skip both). Timings: one warm-up step per solver,
shape and mode (kernels compiled; an update deferred, so the timed steps include applying and
writing it back), then the median of --repeats steps (one, for steps over 5 s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoexp.bench import DTYPES, LastTokenObjective, model_config, random_model, time_ms  # noqa: E402
from zoexp.distributed import Ranks  # noqa: E402
from zoexp.model import ModelBundle  # noqa: E402
from zoexp.offload import HostOffload  # noqa: E402
from zoexp.placement import Placement  # noqa: E402
from zoexp.solvers.mezo import MeZO  # noqa: E402
from zoexp.solvers.spsa15 import SPSA15  # noqa: E402

LONG_S = 5.0  # a step longer than this is timed once (keeps OPT-30B under 5 minutes)
LR = 1e-9  # small enough to leave random weights random, not zero: updates and write-backs run


def quick_config():
    from transformers import OPTConfig

    return OPTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, ffn_dim=256,
                     vocab_size=1024, max_position_embeddings=512, word_embed_proj_dim=64)


def make_solver(name: str, n_perts: int, dist: str):
    common = dict(steps=10**6, batch_size=1, eps=1e-3, lr=LR, dist=dist)
    return MeZO(**common) if name == "mezo" else SPSA15(n_perts=n_perts, **common)


def bundle_of(model, device) -> ModelBundle:
    return ModelBundle(model, None, torch.device(device), next(model.parameters()).dtype,
                       [(n, p) for n, p in model.named_parameters()])


def peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")


def run_steps(solver, placement, bundle, objective, repeats: int):
    """(median step ms, peak GB, [bytes up, bytes down] per timed step) after one warm-up step
    (which also leaves an update deferred, as in training); steps over LONG_S are timed once."""
    solver.place(placement)
    solver.setup(bundle.params, objective)
    store = getattr(placement, "store", None)
    step = iter(range(10**6))
    warm = time_ms(lambda: solver.step(None, next(step)), 1, warmup=0)[0]
    if warm > LONG_S * 1e3:
        repeats = 1
    peak_reset(bundle.device)
    before = (store.bytes_up, store.bytes_down) if store else (0, 0)
    times = time_ms(lambda: solver.step(None, next(step)), repeats, warmup=0)
    after = (store.bytes_up, store.bytes_down) if store else (0, 0)
    peak = peak_gb(bundle.device)
    solver.settle()
    return statistics.median(times), peak, [(a - b) / repeats for a, b in zip(after, before)]


def bandwidth(store, device, repeats: int = 5) -> dict[str, float]:
    """GB/s of pinned host <-> device copies of a block-sized buffer (not the model's: the
    copies below write garbage), on side streams."""
    if device.type != "cuda":
        return {}
    size = max(b.host.numel() for b in store.order)
    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(size, dtype=torch.uint8, device=device)
    up, down = torch.cuda.Stream(device), torch.cuda.Stream(device)

    def timed(copies) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            copies()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    def h2d():
        with torch.cuda.stream(up):
            dev.copy_(host, non_blocking=True)

    def d2h():
        with torch.cuda.stream(down):
            host.copy_(dev, non_blocking=True)

    h2d(), d2h()  # warm
    gb = host.numel() / 1e9
    t_up, t_down = timed(h2d), timed(d2h)
    dev2 = torch.empty_like(dev)

    def both():  # upload into one buffer while another is written back
        h2d()
        with torch.cuda.stream(down):
            host.copy_(dev2, non_blocking=True)

    t_both = timed(both)
    del dev, dev2, host
    return {"h2d": gb / t_up, "d2h": gb / t_down, "duplex_each": gb / t_both}


def in_gpu_times(args, config, dtype, device, batches):
    """{(solver, batch): (ms, peak GB)} with the whole model in GPU memory, and the model."""
    model = random_model(config, dtype, str(device))
    out = {}
    for name in args.solvers:
        for batch, seq in batches:
            objective = LastTokenObjective(model, batch, seq, device)
            bundle = bundle_of(model, device)
            ms, peak, _ = run_steps(make_solver(name, args.n_perts, args.dist), Placement(device),
                                    bundle, objective, args.repeats)
            out[(name, batch, seq)] = (ms, peak)
    return out, model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="opt-30b", help="an OPT preset of zoexp.bench")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--solvers", nargs="+", default=["mezo", "spsa15"], choices=["mezo", "spsa15"])
    parser.add_argument("--n-perts", type=int, default=8, help="1.5-SPSA directions per step")
    parser.add_argument("--batches", nargs="+", default=["16x64", "256x64"], help="BATCHxSEQ")
    parser.add_argument("--dist", default="gaussian", choices=["gaussian", "rademacher"])
    parser.add_argument("--repeats", type=int, default=2, help=f"timed steps (1 if a step takes > {LONG_S:.0f} s)")
    parser.add_argument("--buffers", type=int, default=3, help="GPU block slots of the offload")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny OPT on the CPU with the simulated offload (checks the script)")
    args = parser.parse_args(argv)
    batches = [tuple(int(x) for x in b.split("x")) for b in args.batches]
    device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    if args.quick:  # seconds, not minutes, on a busy CPU: the torch reference draws Gaussians slowly
        config, dtype, batches = quick_config(), DTYPES[args.dtype], [(4, 16), (8, 16)]
        args.dist, args.n_perts, args.repeats = "rademacher", 2, 1
    else:
        config, dtype = model_config(args.model), DTYPES[args.dtype]
    started = time.perf_counter()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (simulated offload)"
    print(f"{'quick tiny OPT' if args.quick else args.model} {args.dtype} on {gpu}; solvers "
          f"{args.solvers} (1.5-SPSA n_perts {args.n_perts}), {args.dist} directions, exact "
          f"(virtual) perturbation; median of {args.repeats} steps (1 if > {LONG_S:.0f} s) after a "
          "warm-up step", flush=True)

    ingpu, model = in_gpu_times(args, config, dtype, device, batches)
    print(f"in-GPU steps timed ({time.perf_counter() - started:.0f} s)", flush=True)

    bundle = bundle_of(model, device)
    offload = HostOffload(device, Ranks(), simulated=device.type == "cpu", buffers=args.buffers)
    t0 = time.perf_counter()
    offload.place(bundle)
    placed_s = time.perf_counter() - t0
    store = offload.store
    print(f"offloaded {len(store.order)} blocks, {store.host_bytes / 1e9:.2f} GB, to "
          f"{'pinned host memory' if device.type == 'cuda' else 'separate CPU buffers'} in "
          f"{placed_s:.1f} s", flush=True)
    bw = bandwidth(store, device)
    if bw:
        print(f"pinned bandwidth: host->device {bw['h2d']:.1f} GB/s, device->host {bw['d2h']:.1f} GB/s, "
              f"both at once {bw['duplex_each']:.1f} GB/s each way", flush=True)

    rows = ["| solver | batch | in-GPU step (ms) | in-GPU peak (GB) | offloaded step (ms) | "
            "offloaded peak (GB) | H2D / step (GB) | D2H / step (GB) | bound (ms) | offloaded / bound |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.solvers:
        for batch, seq in batches:
            objective = LastTokenObjective(bundle.model, batch, seq, device)
            ms, peak, (up, down) = run_steps(make_solver(name, args.n_perts, args.dist), offload,
                                             bundle, objective, args.repeats)
            base_ms, base_peak = ingpu[(name, batch, seq)]
            transfer_ms = up / 1e9 / bw["h2d"] * 1e3 if bw else 0.0
            bound = max(base_ms, transfer_ms)
            which = "transfer" if transfer_ms > base_ms else "compute"
            label = f"{name}" + (f" (n={args.n_perts})" if name == "spsa15" else "")
            rows.append(f"| {label} | {batch} x {seq} | {base_ms:.0f} | {base_peak:.2f} | {ms:.0f} | "
                        f"{peak:.2f} | {up / 1e9:.3g} | {down / 1e9:.3g} | {bound:.0f} ({which}) | "
                        f"{ms / bound:.2f}x |")
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
