#!/bin/bash
# The multi-GPU measurements of one sitting on one host (issue 16), all through torchrun:
#   1. perturbation-parallel 1.5-SPSA (n_perts 40) at OPT-13B shape, batch 16 x 64, on 1, 2, 4
#      and 8 GPUs (as many as the host has): step time, speed-up, identical trajectories;
#   2. FSDP2 (hardware.shard=fsdp) at OPT-66B shape (132 GB in bf16: more than one H200) on 2
#      GPUs, MeZO and 1.5-SPSA (n_perts 8): step time against forwards, peak memory per GPU;
#   3. FSDP2 on 2 GPUs against one process at OPT-1.3B shape (the same seeded weights):
#      trajectories.
# SLURM tasks (hardware.tasks_per_node) start the same processes; this script uses torchrun.
#
#   bash benchmarks/multi_gpu.sh [OUT_DIR]
set -euo pipefail
out=${1:-/tmp/zoexp_multi_gpu}
gpus=$(nvidia-smi -L | wc -l)
mkdir -p "$out"
run() {  # run W ARGS...: one process, or W under torchrun
    local w=$1; shift
    if [ "$w" -eq 1 ]; then python benchmarks/multi_gpu.py "$@" --out "$out"
    else python -m torch.distributed.run --nproc-per-node "$w" benchmarks/multi_gpu.py "$@" --out "$out"; fi
}
for w in 1 2 4 8; do
    if [ "$w" -le "$gpus" ]; then run "$w" --mode parallel --model opt-13b --solvers spsa15 --n-perts 40; fi
done
if [ "$gpus" -ge 2 ]; then
    run 2 --mode fsdp --model opt-66b --meta-init --solvers mezo spsa15 --n-perts 8 --steps 3
    run 1 --mode parallel --model opt-1.3b --solvers mezo spsa15 --n-perts 8 --steps 3
    run 2 --mode fsdp --model opt-1.3b --solvers mezo spsa15 --n-perts 8 --steps 3
fi
nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c
python benchmarks/multi_gpu.py --report "$out"
