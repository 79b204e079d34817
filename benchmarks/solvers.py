"""Every solver at one forward-pass budget, over several seeds: the README comparison table.

The solvers are the options of conf/solver/*.yaml, read at run time (a new solver needs no
edit here). Each (solver, seed) is its own `python main.py solver=<name> hardware.seed=<seed>
...` process, so wall time and peak memory are its own; its stdout and stderr go to
`<out>/logs/<solver>-seed<seed>.log` and its run dir is `<out>/runs/<solver>/seed<seed>`.

Equal compute: a training solver gets steps = budget // (forward passes per step), and the
forward passes per step are *measured*, not assumed: one 2-step run of each training solver
with the same overrides (no evaluation) reads `fwd_passes / steps` from its summary.json
(mezo 2, spsa 2 n, spsa15 2 n + 1, zo_muon n + 1 one-sided, ...; fo_* count 1 forward + 1
backward as 1). Evaluation-only solvers (zeroshot, icl) run once per seed with 0 steps.

Per-solver overrides: `LORA_OVERRIDES` below sets the lr (and n_perts) that the older solvers'
YAML defaults do not have for the default LoRA model; every other solver runs at its YAML
defaults. `--set KEY=VALUE ...` adds overrides to every run, `--solver-set NAME:KEY=VALUE ...`
to one solver's runs (e.g. the lr / eps an Optuna study found: conf/experiment/tune_sst2_lora.yaml).

Output: a markdown table (mean +- std over the seeds of best dev and of test, wall time, peak
memory; failures counted) printed and written to `<out>/solvers.md`, every run's row to
`<out>/runs.jsonl` and the per-solver aggregates to `<out>/solvers.json`.

    python benchmarks/solvers.py --budget 200 --seeds 0 1 2 --out benchmarks/results/<date>
    python benchmarks/solvers.py --device cuda --parallel 8 --budget 2000 --seeds 0 1 2 \\
        --num-dev 500 --num-eval 1000 --data-root /path/to/assets --out /tmp/bench   # one GPU
    python benchmarks/solvers.py --budget 8 --batch-size 2 --num-dev 8 --num-eval 8 \\
        --solvers mezo,zeroshot --seeds 0 1 --out /tmp/smoke                          # a smoke run

`--parallel N` runs N processes at once: on one GPU, small-model runs are launch-bound and
leave the GPU mostly idle, so several share it well (each process holds its own copy of the
model: ~1.5 GB for the default one). On a CPU keep N at 1: the processes would share its cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_ONLY = ("zeroshot", "icl")

# The older solvers' YAML defaults target full-parameter OPT; these are their LoRA values
# (one each, untuned). Solvers not listed run at their YAML defaults.
LORA_OVERRIDES: dict[str, list[str]] = {
    "icl": ["solver.k=4"],
    "spsa": ["solver.lr=3e-3", "solver.eps=1e-2", "solver.n_perts=2"],
    "spsa15": ["solver.lr=3e-3", "solver.eps=1e-2", "solver.n_perts=2"],
    "subzero": ["solver.lr=0.3", "solver.eps=1e-2", "solver.rank=4"],  # ||Z||^2 ~ r^2, not m n
    "zo_sgd_momentum": ["solver.lr=1e-3", "solver.eps=1e-2", "solver.momentum=0.5"],
    "zo_adam": ["solver.lr=1e-3", "solver.eps=1e-2"],
    "fo_sgd": ["solver.lr=1e-1"],
    "fo_adam": ["solver.lr=1e-3"],
}


def solver_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / "solver").glob("*.yaml"))


def parse_solver_sets(items: list[str], names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override or name not in names:
            raise SystemExit(f"error: --solver-set: got {item!r}; allowed: NAME:KEY=VALUE with NAME in {names}")
        out.setdefault(name, []).append(override)
    return out


def overrides_for(name: str, args: argparse.Namespace, solver_sets: dict[str, list[str]]) -> list[str]:
    common = [f"solver={name}", f"solver.batch_size={args.batch_size}", "solver.eval_every=0",
              f"task.num_dev={args.num_dev}", f"task.num_eval={args.num_eval}"]
    if args.device:
        common.append(f"hardware.device={args.device}")
    if args.data_root:
        common.append(f"data_root={args.data_root}")
    return [*common, *LORA_OVERRIDES.get(name, []), *args.set, *solver_sets.get(name, [])]


def run_main(overrides: list[str], log: Path) -> tuple[int, float]:
    """One `python main.py` process, its output to `log`: (exit code, wall seconds)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as fh:
        fh.write("python main.py " + " ".join(overrides) + "\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "main.py", *overrides], cwd=ROOT, env=env, stdout=fh,
                              stderr=subprocess.STDOUT, text=True)
    return proc.returncode, time.perf_counter() - started


def last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1][-300:]


def measure_per_step(name: str, overrides: list[str], out: Path) -> tuple[int | None, str | None]:
    """Forward passes per step of a training solver, from a 2-step run without evaluation."""
    run_dir = out / "measure" / name
    code, _ = run_main([*overrides, "solver.steps=2", "task.num_dev=0", "task.num_eval=1",
                        f"hydra.run.dir={run_dir}"], out / "logs" / f"{name}-measure.log")
    if code != 0:
        return None, last_error(out / "logs" / f"{name}-measure.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    return math.ceil(summary["fwd_passes"] / summary["steps"]), None


def run_one(name: str, seed: int, per_step: int, overrides: list[str], args: argparse.Namespace,
            out: Path, deadline: float) -> dict:
    steps = 0 if per_step == 0 else args.budget // per_step
    if time.monotonic() > deadline:  # --time-limit: not started, and not counted as a run
        return {"solver": name, "seed": seed, "steps": steps, "fwd_per_step": per_step, "skipped": True}
    run_dir = out / "runs" / name / f"seed{seed}"
    log = out / "logs" / f"{name}-seed{seed}.log"
    code, wall = run_main([*overrides, f"solver.steps={steps}", f"hardware.seed={seed}",
                           f"hydra.run.dir={run_dir}"], log)
    row = {"solver": name, "seed": seed, "steps": steps, "fwd_per_step": per_step, "log": str(log)}
    if code != 0 or not (run_dir / "summary.json").exists():
        return {**row, "failed": True, "error": last_error(log), "process_wall_s": round(wall, 1)}
    return {**row, **json.loads((run_dir / "summary.json").read_text()), "process_wall_s": round(wall, 1)}


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["solver"] for r in rows):
        mine = [r for r in rows if r["solver"] == name]
        ok = [r for r in mine if not r.get("failed")]
        agg = {"solver": name, "runs": len(mine), "failed": len(mine) - len(ok),
               "steps": mine[0]["steps"], "fwd_per_step": mine[0]["fwd_per_step"]}
        if ok:
            metric = ok[0]["metric"]
            agg["metric"] = metric
            for key in (f"best_dev_{metric}", f"test_{metric}", "wall_time_s", "peak_mem_gb", "fwd_passes"):
                agg[f"{key}_mean"], agg[f"{key}_std"] = mean_std([r.get(key) for r in ok])
        else:
            agg["error"] = mine[0].get("error")
        out.append(agg)
    return out


def table(aggs: list[dict], seeds: list[int]) -> str:
    metric = next((a["metric"] for a in aggs if "metric" in a), "accuracy")
    lines = [f"| solver | steps | fwd / step | fwd passes | dev {metric} (best) | test {metric} | wall time (s) | "
             f"peak mem (GiB) | runs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in aggs:
        runs = f"{a['runs'] - a['failed']}/{a['runs']}"
        if "metric" not in a:
            lines.append(f"| {a['solver']} | {a['steps']} | {a['fwd_per_step']} | failed | | | | | {runs} |")
            continue
        lines.append(
            f"| {a['solver']} | {a['steps']} | {a['fwd_per_step']} | {a['fwd_passes_mean']:.0f} | "
            f"{a[f'best_dev_{metric}_mean']:.3f} ± {a[f'best_dev_{metric}_std']:.3f} | "
            f"{a[f'test_{metric}_mean']:.3f} ± {a[f'test_{metric}_std']:.3f} | {a['wall_time_s_mean']:.0f} | "
            f"{a['peak_mem_gb_mean']:.2f} | {runs} |")
    lines.append(f"\nmean ± std over the runs of seeds {', '.join(map(str, seeds))} (sample std; 0 for one "
                 f"run); runs: finished / started")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=200, help="forward passes per training run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="hardware.seed of each repetition")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-dev", type=int, default=200)
    parser.add_argument("--num-eval", type=int, default=1000)
    parser.add_argument("--solvers", default="all", help="comma-separated subset of conf/solver (default: all)")
    parser.add_argument("--device", help="hardware.device for every run (cpu, cuda, cuda:1; default: the config's auto)")
    parser.add_argument("--parallel", type=int, default=1, help="concurrent main.py processes")
    parser.add_argument("--data-root", help="data_root for every run (a folder holding sst2/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--solver-set", nargs="*", default=[], metavar="NAME:KEY=VALUE",
                        help="overrides for one solver's runs")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="start no run after this many minutes; the table counts the runs that did")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results/solvers-<time>)")
    args = parser.parse_args(argv)
    available = solver_names()
    names = available if args.solvers == "all" else args.solvers.split(",")
    unknown = sorted(set(names) - set(available))
    if unknown or args.parallel < 1 or args.budget < 1:
        raise SystemExit(f"error: --solvers: unknown {unknown}; allowed: {', '.join(available)}" if unknown
                         else "error: --parallel and --budget: allowed: integers >= 1")
    solver_sets = parse_solver_sets(args.solver_set, available)
    out = args.out or ROOT / "benchmarks" / "results" / time.strftime("solvers-%Y-%m-%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    overrides = {name: overrides_for(name, args, solver_sets) for name in names}
    deadline = time.monotonic() + (args.time_limit * 60 if args.time_limit else math.inf)

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        training = [n for n in names if n not in EVAL_ONLY]
        measured = dict(zip(training, pool.map(lambda n: measure_per_step(n, overrides[n], out), training)))
        per_step = {n: 0 for n in names if n in EVAL_ONLY}
        rows: list[dict] = []
        for name, (value, error) in measured.items():
            if value is None:
                rows += [{"solver": name, "seed": s, "steps": 0, "fwd_per_step": None, "failed": True,
                          "error": f"could not measure forward passes per step: {error}"} for s in args.seeds]
                print(f"{name}: measuring failed: {error}", file=sys.stderr, flush=True)
            else:
                per_step[name] = value
        # seed-major: an interrupted comparison still has every solver at its first seeds
        jobs = [(n, s) for s in args.seeds for n in names if n in per_step]
        futures = [pool.submit(run_one, n, s, per_step[n], overrides[n], args, out, deadline) for n, s in jobs]
        skipped = 0
        with (out / "runs.jsonl").open("w") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)  # solvers that could not be measured
            for future in futures:
                row = future.result()
                if row.get("skipped"):
                    skipped += 1
                    continue
                rows.append(row)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                status = "FAILED " + row["error"] if row.get("failed") else \
                    f"dev {row[f'best_dev_' + row['metric']]:.3f} test {row[f'test_' + row['metric']]:.3f}"
                print(f"{row['solver']} seed {row['seed']}: {row['steps']} steps, {status}", file=sys.stderr,
                      flush=True)
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: (order[r["solver"]], r["seed"]))
    aggs = aggregate(rows)
    text = table(aggs, args.seeds)
    print(text)
    (out / "solvers.md").write_text(f"python benchmarks/solvers.py {' '.join(argv or sys.argv[1:])}\n\n{text}\n")
    (out / "solvers.json").write_text(json.dumps(aggs, indent=1) + "\n")
    if skipped:
        print(f"--time-limit: {skipped} of {len(jobs)} runs not started", file=sys.stderr)
    return 1 if any(r.get("failed") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
