#!/bin/bash
# The same 1.5-SPSA run as one process (GPU 0) and as two (torchrun, NCCL): wall times, and the
# check that both write the same seed trajectory (zoexp/distributed.py).
#
#   bash benchmarks/distributed_spsa.sh <model dir or hub id> [task.data_dir]
set -euo pipefail
model=$1
data=${2:+task.data_dir=$2}
out=${OUT_DIR:-/tmp/zoexp_distributed}
rm -rf "$out"
common="model=hf model.name=$model hardware=cuda peft=none $data task.num_dev=200 solver=spsa15
        solver.steps=30 solver.eval_every=0 solver.n_perts=8 solver.lr=1e-5 solver.eps=1e-3"
# warm-up (discarded): compiles the Triton kernels once, so neither timed run pays for it
CUDA_VISIBLE_DEVICES=0 python main.py $common solver.steps=1 hydra.run.dir="$out/warmup" > "$out.warmup.log" 2>&1
t0=$(date +%s.%N)
CUDA_VISIBLE_DEVICES=0 python main.py $common hydra.run.dir="$out/one" > "$out.one.log" 2>&1
t1=$(date +%s.%N)
python -m torch.distributed.run --nproc-per-node 2 main.py $common hydra.run.dir="$out/two" > "$out.two.log" 2>&1
t2=$(date +%s.%N)
nvidia-smi --query-gpu=name --format=csv,noheader | head -2
python - "$out" "$t0" "$t1" "$t2" <<'PY'
import json, sys
out, t0, t1, t2 = sys.argv[1], *map(float, sys.argv[2:])
runs = {n: json.load(open(f"{out}/{n}/summary.json")) for n in ("one", "two")}
same = open(f"{out}/one/trajectory.jsonl").read() == open(f"{out}/two/trajectory.jsonl").read()
print(f"whole command: one process {t1 - t0:.1f} s, two processes {t2 - t1:.1f} s")
print("| | one process | two processes |\n|---|---:|---:|")
for key in ("wall_time_s", "fwd_passes", "peak_mem_gb", "best_dev_accuracy", "test_accuracy"):
    print(f"| {key} | {runs['one'][key]} | {runs['two'][key]} |")
print(f"run time ratio: {runs['one']['wall_time_s'] / runs['two']['wall_time_s']:.2f}x; "
      f"trajectories identical: {same}")
PY
