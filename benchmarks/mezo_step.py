"""A MeZO step vs the two forward passes it needs, at OPT-13B shape (random bf16 weights).

One run, one model, one batch (16 x 64 tokens by default), several ways of taking the step;
the zoexp ways are the MeZO solver itself (`zoexp.solvers.mezo`, `MeZO.step`):

* zoexp in place (`solver.exact=false`): `move` between the two forwards, then one fused
  sweep that restores, updates and applies the next step's perturbation -- two sweeps a step;
* zoexp exact (the default): nothing is written until the update; each forward reads the
  perturbed weights through a temporary per tensor -- one update sweep per step;
* the reference way (MeZO's code): a `torch.normal` tensor per parameter, regenerated from a
  reset torch seed, in four sweeps (+eps, -2 eps, +eps, update).

Prints the forward time, each way's step time and its ratio to two forwards, the parameter
sweep time, and peak GPU memory of a step vs a forward pass (ratio).

    python benchmarks/mezo_step.py --model opt-13b --batch 16 --seq 64
"""

from __future__ import annotations

import argparse
import statistics

import torch

from zoexp.bench import DTYPES, FixedBatchObjective, add_workload_args, random_batch_loss, time_ms
from zoexp.perturb import PerturbationEngine
from zoexp.solvers.mezo import MeZO

EPS, LR = 1e-3, 1e-7


class SolverSteps:
    """zoexp's own MeZO solver (`zoexp.solvers.mezo`) on the fixed batch, a step per call."""

    def __init__(self, params, loss, dist: str, exact: bool) -> None:
        self.solver = MeZO(steps=1 << 30, batch_size=1, lr=LR, eps=EPS, dist=dist, exact=exact)
        self.solver.setup(params, FixedBatchObjective(loss))
        self.t = 0

    def step(self) -> None:
        self.solver.step(None, self.t)
        self.t += 1

    def close(self) -> None:
        self.solver.settle()


class ReferenceMeZO:
    """MeZO's own way: torch.normal per tensor from a reset seed, four sweeps per step."""

    def __init__(self, params, loss) -> None:
        self.params, self.loss, self.seed = list(params), loss, 0

    def _perturb(self, scale: float) -> None:
        torch.manual_seed(self.seed)
        for p in self.params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.device, dtype=p.dtype)
            p.data = p.data + scale * z * EPS

    def step(self) -> float:
        self._perturb(1)
        plus = float(self.loss())
        self._perturb(-2)
        minus = float(self.loss())
        self._perturb(1)
        grad = (plus - minus) / (2 * EPS)
        torch.manual_seed(self.seed)
        for p in self.params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.device, dtype=p.dtype)
            p.data = p.data - LR * (grad * z)
        self.seed += 1
        return grad

    def close(self) -> None:
        pass


def peak_gib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser()
    add_workload_args(parser)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    model, loss = random_batch_loss(args.model, DTYPES[args.dtype], "cuda", args.batch, args.seq)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    forward = statistics.median(time_ms(loss, 10, warmup=3))
    fwd_peak = peak_gib(loss)
    engine = PerturbationEngine(params, dist="rademacher", exact=False)
    gaussian = PerturbationEngine(params, dist="gaussian", exact=False)
    sweeps = {
        "in-place scale (torch._foreach_mul_), same bytes as a sweep":
            lambda: torch._foreach_mul_(params, 1.0),
        "zoexp move, Rademacher": lambda: engine.move(0, EPS, -EPS),
        "zoexp move, Gaussian": lambda: gaussian.move(0, EPS, -EPS),
    }
    with torch.no_grad():
        sweep_ms = {k: statistics.median(time_ms(fn, 5)) for k, fn in sweeps.items()}
    # An engine keeps aliases of the parameter storages; drop them before the reference way
    # replaces those storages (`p.data = ...`), or the old ones would stay allocated.
    del engine, gaussian, sweeps

    ways = {
        "zoexp in place, Rademacher": lambda: SolverSteps(params, loss, "rademacher", exact=False),
        "zoexp in place, Gaussian": lambda: SolverSteps(params, loss, "gaussian", exact=False),
        "zoexp exact (default), Rademacher": lambda: SolverSteps(params, loss, "rademacher", exact=True),
        "zoexp exact (default), Gaussian": lambda: SolverSteps(params, loss, "gaussian", exact=True),
        "reference (torch.normal per tensor, 4 sweeps)": lambda: ReferenceMeZO(params, loss),
    }
    results = []
    for name, make in ways.items():
        solver = make()
        step = statistics.median(time_ms(solver.step, args.steps, warmup=2))
        peak = peak_gib(solver.step)
        solver.close()
        del solver
        results.append((name, step, peak))
        print(f"{name}: {step:.1f} ms, peak {peak:.2f} GiB", flush=True)

    print(f"\n{torch.cuda.get_device_name()}, {args.model} shape ({n_params / 1e9:.2f} B params, "
          f"{args.dtype}, random weights), batch {args.batch} x {args.seq} tokens, torch "
          f"{torch.__version__}\n")
    print(f"forward pass: {forward:.1f} ms, peak memory {fwd_peak:.2f} GiB\n")
    print("| parameter sweep (all weights) | ms |\n|---|---:|")
    for name, ms in sweep_ms.items():
        print(f"| {name} | {ms:.1f} |")
    print("\n| MeZO step | ms | / two forwards | peak GiB | / forward peak |")
    print("|---|---:|---:|---:|---:|")
    for name, step, peak in results:
        print(f"| {name} | {step:.1f} | {step / (2 * forward):.2f} | {peak:.2f} | "
              f"{peak / fwd_peak:.3f} |")


if __name__ == "__main__":
    main()
