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

from zoexp.bench import DTYPES, model_config, random_model, time_ms
from zoexp.perturb import PerturbationEngine

EPS = 1e-3


def separate(engine: PerturbationEngine, loss, seeds: list[int]) -> None:
    for seed in seeds:
        engine.perturb(seed, EPS)
        float(loss())
        engine.move(seed, EPS, -EPS)
        float(loss())
        engine.restore(seed, -EPS)


def chained(engine: PerturbationEngine, loss, seeds: list[int]) -> None:
    engine.perturb(seeds[0], EPS)
    for k, seed in enumerate(seeds):
        float(loss())
        engine.move(seed, EPS, -EPS)
        float(loss())
        if k + 1 < len(seeds):
            engine.restore_update_perturb(seed, -EPS, 0.0, next_seed=seeds[k + 1], next_scale=EPS)
        else:
            engine.restore(seed, -EPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="opt-13b")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--n-perts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = random_model(model_config(args.model), DTYPES[args.dtype], "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(0))

    @torch.no_grad()
    def loss():
        return model(input_ids=ids, labels=ids).loss

    forward = statistics.median(time_ms(loss, 10, warmup=3))
    seeds = list(range(args.n_perts))
    print(f"{torch.cuda.get_device_name()}, {args.model} shape, {args.dtype}, batch {args.batch} x "
          f"{args.seq}, n_perts {args.n_perts}; forward {forward:.1f} ms\n")
    print("| probes of one step, in place | ms | / its 2n forwards | sweeps |")
    print("|---|---:|---:|---:|")
    for dist in ("rademacher", "gaussian"):
        engine = PerturbationEngine(params, dist=dist, exact=False)
        with torch.no_grad():
            for name, fn, sweeps in (("one direction at a time", separate, 3 * args.n_perts),
                                     ("chained (probe_all)", chained, 2 * args.n_perts + 1)):
                ms = statistics.median(time_ms(lambda: fn(engine, loss, seeds), args.repeats, warmup=1))
                print(f"| {dist}, {name} | {ms:.0f} | {ms / (2 * args.n_perts * forward):.2f} | {sweeps} |",
                      flush=True)
        del engine


if __name__ == "__main__":
    main()
