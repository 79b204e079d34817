"""Every solver on the default model at one forward-pass budget: the README comparison table.

Each solver runs as its own `python main.py solver=<name> ...` process (so wall time and peak
memory are its own), with steps = budget // forward passes per step (mezo 2, spsa / subzero /
zo_* 2 n_perts, spsa15 2 n_perts + 1, fo_* 1 forward + 1 backward; zeroshot / icl 0), and the
row is read back from the run's summary.json. Prints (and with --out writes) a markdown table.

    python benchmarks/solvers.py [--budget 200] [--batch-size 16] [--num-dev 200] [--num-eval 1000]

With the defaults (the README table) all ten runs take ~35 min on an idle 2-core CPU; a
smoke run is --budget 20 --batch-size 4 --num-dev 16 --num-eval 48.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_PERTS = 2  # for spsa and spsa15

# name -> (forward passes per step, overrides). lrs: one value each, set for a short LoRA run.
SOLVERS: dict[str, tuple[int, list[str]]] = {
    "zeroshot": (0, []),
    "icl": (0, ["solver.k=4"]),
    "mezo": (2, ["solver.lr=3e-3", "solver.eps=1e-2"]),
    "spsa": (2 * N_PERTS, ["solver.lr=3e-3", "solver.eps=1e-2", f"solver.n_perts={N_PERTS}"]),
    "spsa15": (2 * N_PERTS + 1, ["solver.lr=3e-3", "solver.eps=1e-2", f"solver.n_perts={N_PERTS}"]),
    "subzero": (2, ["solver.lr=0.3", "solver.eps=1e-2", "solver.rank=4"]),  # ||Z||^2 ~ r^2, not m n
    "zo_sgd_momentum": (2, ["solver.lr=1e-3", "solver.eps=1e-2", "solver.momentum=0.5"]),
    "zo_adam": (2, ["solver.lr=1e-3", "solver.eps=1e-2"]),
    "fo_sgd": (1, ["solver.lr=1e-1"]),
    "fo_adam": (1, ["solver.lr=1e-3"]),
}


def run_solver(name: str, args: argparse.Namespace, run_dir: Path) -> dict:
    per_step, overrides = SOLVERS[name]
    steps = args.budget // per_step if per_step else 0
    cmd = [sys.executable, "main.py", f"solver={name}", "peft=lora", f"solver.steps={steps}",
           f"solver.batch_size={args.batch_size}", "solver.eval_every=0", f"task.num_dev={args.num_dev}",
           f"task.num_eval={args.num_eval}", f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True)
    if proc.returncode != 0:
        print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {"solver": name, "steps": steps, "failed": True}
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"solver": name, "steps": steps, **summary}


def table(rows: list[dict]) -> str:
    lines = ["| solver | steps | fwd passes | dev acc (best) | test acc | wall time (s) | peak RSS (GiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['solver']} | {r['steps']} | failed | | | | |")
            continue
        lines.append(f"| {r['solver']} | {r['steps']} | {r['fwd_passes']} | {r['best_dev_accuracy']:.3f} | "
                     f"{r['test_accuracy']:.3f} | {r['wall_time_s']:.0f} | {r['peak_mem_gb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=200, help="forward passes per training solver")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-dev", type=int, default=200)
    parser.add_argument("--num-eval", type=int, default=1000)
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, help="also write the table (and rows as JSON) here")
    args = parser.parse_args()
    names = args.solvers.split(",")
    unknown = sorted(set(names) - set(SOLVERS))
    if unknown:
        raise SystemExit(f"error: --solvers: unknown {unknown}; allowed: {', '.join(SOLVERS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(run_solver(name, args, Path(tmp) / name))
            print(f"{name}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
