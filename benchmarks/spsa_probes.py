"""n-SPSA / 1.5-SPSA probes in place: chained (2 n + 1 sweeps) vs one direction at a time (3 n).

Probing n directions at one theta needs, per direction, theta + eps z, theta - eps z and back.
Done one direction at a time that is perturb / move / restore: 3 sweeps. `ZOSolver.probe_all`
fuses direction k's restore with direction k+1's perturbation (one two-seed sweep), so a step
costs 2 n + 1 sweeps. This times both on the same model and batch (OPT-13B shape, random bf16
weights, in-place engine, Rademacher or Gaussian), with the 2 n forwards the probes need.

    PYTHONPATH=. python benchmarks/spsa_probes.py --model opt-13b --n-perts 8
"""

from __future__ import annotations

import argparse
import statistics

import torch

from zoexp.bench import DTYPES, FixedBatchObjective, add_workload_args, random_batch_loss, time_ms
from zoexp.perturb import PerturbationEngine
from zoexp.solvers.spsa import SPSA

EPS = 1e-3


def separate(engine: PerturbationEngine, loss, seeds: list[int]) -> None:
    """One direction at a time: perturb, move, restore (3 sweeps each in place)."""
    for seed in seeds:
        engine.perturb(seed, EPS)
        float(loss())
        engine.move(seed, EPS, -EPS)
        float(loss())
        engine.restore(seed, -EPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(parser)
    parser.add_argument("--n-perts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, loss = random_batch_loss(args.model, DTYPES[args.dtype], "cuda", args.batch, args.seq)
    params = [p for p in model.parameters() if p.requires_grad]
    forward = statistics.median(time_ms(loss, 10, warmup=3))
    print(f"{torch.cuda.get_device_name()}, {args.model} shape, {args.dtype}, batch {args.batch} x "
          f"{args.seq}, n_perts {args.n_perts}; forward {forward:.1f} ms\n")
    print("| probes of one step, in place | ms | / its 2n forwards | sweeps |")
    print("|---|---:|---:|---:|")
    for dist in ("rademacher", "gaussian"):
        solver = SPSA(steps=1, batch_size=1, eps=EPS, n_perts=args.n_perts, dist=dist, exact=False)
        solver.setup(params, FixedBatchObjective(loss))
        seeds = solver.seeds(0)
        ways = (("one direction at a time", lambda: separate(solver.directions, loss, seeds),
                 3 * args.n_perts),
                ("chained (probe_all)", lambda: solver.probe_all(None, 0), 2 * args.n_perts + 1))
        with torch.no_grad():
            for name, fn, sweeps in ways:
                ms = statistics.median(time_ms(fn, args.repeats, warmup=1))
                print(f"| {dist}, {name} | {ms:.0f} | {ms / (2 * args.n_perts * forward):.2f} | {sweeps} |",
                      flush=True)
        del solver


if __name__ == "__main__":
    main()
