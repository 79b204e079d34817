"""One ZO step on several GPUs: perturbation-parallel (every rank holds the model, probes its
share of the directions) or FSDP2-sharded (hardware.shard=fsdp: every rank holds 1/W of it).

Launched like a run, one process per GPU:

    torchrun --nproc-per-node W benchmarks/multi_gpu.py --mode parallel --model opt-13b \\
        --solvers spsa15 --n-perts 40 --out DIR
    torchrun --nproc-per-node 2 benchmarks/multi_gpu.py --mode fsdp --model opt-66b --meta-init \\
        --solvers mezo spsa15 --out DIR
    python benchmarks/multi_gpu.py --report DIR     # the tables, and whether trajectories agree

`benchmarks/multi_gpu.sh` runs the whole multi-GPU sweep (issue 16). Each launch writes
DIR/<mode>-<model>-<W>.json from rank 0: per solver the median step time, the time of one
forward of the same batch (theta), peak GPU memory of every rank and the step records (seeds
and coefficients: the trajectory). The model has random weights and the batch is random
tokens (zoexp.bench.LastTokenObjective). `--meta-init` builds the model on the meta device
and generates each rank's shards (or, in parallel mode, the whole model) on its GPU: no
process ever holds a 132 GB OPT-66B; its values differ from a seeded full build, so only
runs with the same init compare trajectories. Without it the whole model is generated with
torch seed 0 on every rank (the same values everywhere), then sharded.

On a CPU (`--quick`: a tiny OPT, gloo) the same code runs, to check the script:

    torchrun --nproc-per-node 2 benchmarks/multi_gpu.py --quick --mode fsdp --out /tmp/mg
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoexp.bench import DTYPES, LastTokenObjective, model_config, time_ms  # noqa: E402
from zoexp.distributed import close, init_ranks  # noqa: E402
from zoexp.model import ModelBundle  # noqa: E402
from zoexp.placement import Placement  # noqa: E402
from zoexp.solvers.mezo import MeZO  # noqa: E402
from zoexp.solvers.spsa15 import SPSA15  # noqa: E402

LR = 1e-6


def quick_config():
    from transformers import OPTConfig

    return OPTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, ffn_dim=256,
                     vocab_size=1024, max_position_embeddings=512, word_embed_proj_dim=64)


def fill_random(model: torch.nn.Module) -> None:
    """Random values in every parameter's local part (after `to_empty`), generated where it is."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if name.endswith("bias"):
                local.zero_()
            elif p.dim() == 1:
                local.fill_(1.0)
            else:
                local.normal_(0.0, 0.02)


def build(config, dtype, device, meta: bool):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("meta" if meta else device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def make_solver(name: str, n_perts: int, dist: str):
    common = dict(steps=10**6, batch_size=1, eps=1e-3, lr=LR, dist=dist)
    return MeZO(**common) if name == "mezo" else SPSA15(n_perts=n_perts, **common)


def peak_gb(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")


def run(args) -> None:
    quick = args.quick
    device = torch.device("cuda" if torch.cuda.is_available() and not quick else "cpu")
    ranks, device = init_ranks(device)
    config = quick_config() if quick else model_config(args.model)
    dtype = DTYPES[args.dtype]
    model = build(config, dtype, device, args.meta_init)
    bundle = ModelBundle(model, None, device, dtype, [(n, p) for n, p in model.named_parameters()])
    if args.mode == "fsdp":
        from zoexp.sharding import FSDPShard

        placement = FSDPShard(device, ranks)
        placement.place(bundle, materialize=(lambda m: (m.to_empty(device=device), fill_random(m)))
                        if args.meta_init else None)
    else:
        placement = Placement(device, ranks)
        if args.meta_init:
            model.to_empty(device=device)
            fill_random(model)
            bundle.trainable = [(n, p) for n, p in model.named_parameters()]
    objective = LastTokenObjective(model, args.batch, args.seq, device)
    result = {"mode": args.mode, "model": "quick" if quick else args.model, "world": ranks.world,
              "batch": args.batch, "seq": args.seq, "meta_init": args.meta_init,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "order": args.solvers, "solvers": {}}
    for name in args.solvers:
        solver = make_solver(name, args.n_perts, args.dist)
        placement.check(solver)
        solver.distribute(placement.ranks)
        solver.place(placement)
        solver.setup(bundle.params, objective)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        records = []

        def step():
            records.append(solver.step(None, len(records)).record)
            if ranks.world > 1:
                torch.distributed.barrier()

        times = time_ms(step, args.steps, warmup=1)
        solver.settle()
        forward = statistics.median(time_ms(lambda: objective.loss(None), 3, warmup=1))
        peaks = ranks.merge([peak_gb(device) if r == ranks.rank else None for r in range(ranks.world)])
        probes = (2 if name == "mezo" else 2 * len(ranks.share(args.n_perts)) + 1)
        result["solvers"][name] = {
            "n_perts": None if name == "mezo" else args.n_perts, "step_ms": times,
            "median_ms": statistics.median(times), "forward_ms": forward,
            "probes_per_rank": probes, "peak_gb": peaks, "records": records}
        if ranks.main:
            print(f"{args.mode} W={ranks.world} {name}: step {statistics.median(times):.0f} ms, "
                  f"forward {forward:.0f} ms, {probes} probes a rank, peak {max(peaks):.2f} GB", flush=True)
    if ranks.main and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        init = "meta" if args.meta_init else "seeded"
        (out / f"{args.mode}-{result['model']}-{init}-{ranks.world}.json").write_text(json.dumps(result))
    close(ranks)


def report(folder: Path) -> None:
    """Tables of every result in `folder`, and whether trajectories agree across GPU counts.
    The solvers of one launch run one after another on the same weights, so a solver's
    trajectory compares with another launch's only if the solvers before it were the same."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    by_key: dict[tuple, list] = {}
    for r in runs:
        by_key.setdefault((r["mode"], r["model"], r["meta_init"]), []).append(r)
    for (mode, model, meta), group in sorted(by_key.items()):
        group.sort(key=lambda r: r["world"])
        print(f"\n{mode}, {model} ({'meta init' if meta else 'seeded full init'}), batch "
              f"{group[0]['batch']} x {group[0]['seq']}, {group[0]['device']}\n")
        print("| solver | GPUs | step (ms) | speed-up | efficiency | forward (ms) | step / (probes x forward) "
              "| peak GB per GPU | trajectory = 1 GPU |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for name in group[0]["solvers"]:
            base = group[0]["solvers"][name]
            for r in group:
                s = r["solvers"].get(name)
                if s is None:
                    continue
                speed = base["median_ms"] / s["median_ms"]
                same = comparable(r, group[0], name) if r is not group[0] else "-"
                print(f"| {name} | {r['world']} | {s['median_ms']:.0f} | {speed:.2f}x | "
                      f"{speed / (r['world'] / group[0]['world']):.0%} | {s['forward_ms']:.0f} | "
                      f"{s['median_ms'] / (s['probes_per_rank'] * s['forward_ms']):.2f} | "
                      f"{max(s['peak_gb']):.2f} | {same} |")
    # a sharded run against the one-process run of the same model and init
    for (mode, model, meta), group in by_key.items():
        if mode != "fsdp":
            continue
        alone = [r for r in by_key.get(("parallel", model, meta), []) if r["world"] == 1]
        for r in group:
            for a in alone:
                for name, s in r["solvers"].items():
                    if name in a["solvers"]:
                        print(f"fsdp {model} W={r['world']} {name}: trajectory equals the one-process "
                              f"run: {comparable(r, a, name)} ({len(s['records'])} steps)")


def comparable(run: dict, other: dict, name: str):
    """Whether `name`'s records are equal in both launches ('n/a' if earlier solvers differ)."""
    k = run["order"].index(name)
    if name not in other["order"] or other["order"][:other["order"].index(name)] != run["order"][:k]:
        return "n/a (other solvers ran first)"
    return run["solvers"][name]["records"] == other["solvers"][name]["records"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["parallel", "fsdp"], default="parallel")
    parser.add_argument("--model", default="opt-13b")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--solvers", nargs="+", default=["spsa15"], choices=["mezo", "spsa15"])
    parser.add_argument("--n-perts", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--dist", default="gaussian", choices=["gaussian", "rademacher"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--meta-init", action="store_true",
                        help="build on the meta device, generate only each rank's part")
    parser.add_argument("--quick", action="store_true", help="a tiny OPT on the CPU (gloo)")
    parser.add_argument("--out", help="folder for the rank-0 JSON result")
    parser.add_argument("--report", type=Path, help="print the tables of a results folder and exit")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report)
        return
    if args.quick:
        args.n_perts, args.batch, args.seq, args.steps, args.dist = min(args.n_perts, 4), 4, 16, 2, "rademacher"
    run(args)


if __name__ == "__main__":
    main()
