"""hardware.shard=fsdp (zoexp.sharding): FSDP2 shards every block over the processes, probes run
layer-major on the gathered blocks, each rank updates its own rows -- and the run is the
one-process run, bit for bit. Two gloo processes on the CPU, spawned here and via torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import ROOT
from tests.test_distributed import free_port
from tests.tiny_models import bundle_of, objective_for, save_tiny, task_batch, tiny_model
from zoexp.distributed import Ranks, close, init_ranks
from zoexp.errors import ConfigError
from zoexp.placement import Placement
from zoexp.sharding import FSDPShard, host_copy
from zoexp.solvers.mezo import MeZO
from zoexp.solvers.spsa import SPSA
from zoexp.solvers.spsa15 import SPSA15
from zoexp.solvers.subzero import SubZero

STEPS, N_PERTS = 3, 3
SOLVERS = {"spsa": (SPSA, {"n_perts": N_PERTS}), "spsa15": (SPSA15, {"n_perts": N_PERTS}),
           "mezo": (MeZO, {})}
CPU = torch.device("cpu")


def train(name: str, ranks: Ranks) -> dict:
    """STEPS steps of solver `name` on the tiny OPT (tied head: one FSDP group with the root)."""
    cls, kw = SOLVERS[name]
    bundle = bundle_of(tiny_model("opt"))
    placement = FSDPShard(CPU, ranks) if ranks.world > 1 else Placement(CPU)
    solver = cls(steps=STEPS, batch_size=4, eps=1e-2, lr=1e-2, dist="rademacher", **kw)
    placement.check(solver)
    solver.distribute(placement.ranks)
    placement.place(bundle)
    data, batch = task_batch("rte")
    objective = objective_for(bundle, data)
    solver.place(placement)
    solver.setup(bundle.params, objective)
    records = [solver.step(batch, t).record for t in range(STEPS)]
    solver.settle()
    return {"records": records, "params": [host_copy(p) for p in bundle.params],
            "passes": objective.scorer.forward_passes,
            "local": [p.to_local().numel() for p in bundle.params] if ranks.world > 1 else None}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    ranks, _ = init_ranks(CPU)
    torch.save({name: train(name, ranks) for name in SOLVERS}, os.path.join(out_dir, f"{rank}.pt"))
    close(ranks)


def test_two_sharded_processes_take_the_one_process_steps(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2)]
    total = sum(p.numel() for p in bundle_of(tiny_model("opt")).params)
    for name in SOLVERS:
        alone = train(name, Ranks())
        for got in ranks:
            assert got[name]["records"] == alone["records"], name      # the trajectory
            assert all(torch.equal(a, b) for a, b in zip(got[name]["params"], alone["params"])), name
        # each rank held half of every tensor (the odd row goes to rank 0)
        assert sum(ranks[0][name]["local"]) + sum(ranks[1][name]["local"]) == total
        assert 0 < sum(ranks[1][name]["local"]) <= sum(ranks[0][name]["local"]) < total
    # spsa / spsa15: directions 0, 2 on rank 0 and 1 on rank 1 (+ f0 on each rank for 1.5-SPSA),
    # one grouped forward a step; MeZO: both probes on every rank
    assert [r["spsa"]["passes"] for r in ranks] == [STEPS * 4, STEPS * 2]
    assert [r["spsa15"]["passes"] for r in ranks] == [STEPS * 5, STEPS * 3]
    assert [r["mezo"]["passes"] for r in ranks] == [STEPS * 2, STEPS * 2]


def test_refusals_before_the_model_loads():
    two = Ranks(0, 2)
    with pytest.raises(ConfigError, match="one process"):
        FSDPShard(CPU, Ranks()).check(SPSA(steps=1, n_perts=2))
    with pytest.raises(ConfigError) as err:
        FSDPShard(CPU, two).check(MeZO(steps=1, exact=False))
    assert err.value.field == "solver.exact"
    with pytest.raises(ConfigError, match="SubZero"):
        FSDPShard(CPU, two).check(SubZero(steps=1, n_perts=2))
    from peft import LoraConfig
    with pytest.raises(ConfigError, match="LoraConfig"):
        FSDPShard(CPU, two).check(SPSA(steps=1, n_perts=2), LoraConfig(task_type="CAUSAL_LM"))
    # every forward is collective: evaluation runs all batches on every rank
    assert FSDPShard(CPU, Ranks(1, 2)).ranks.share_batches(5) == [0, 1, 2, 3, 4]
    assert Ranks(1, 2).share_batches(5) == [1, 3]


@pytest.mark.slow
def test_torchrun_sharded_run_matches_one_process(tmp_path, sst2_dir):
    """`torchrun --nproc-per-node 2 main.py hardware.shard=fsdp ...`: the one-process run's
    trajectory, dev / test accuracy and mid-run checkpoint (gathered from both ranks)."""
    model = save_tiny(tmp_path / "tiny-opt")
    common = ["hardware=cpu", "hardware.dtype=bf16", "peft=none", "model=hf", f"model.name={model}",
              "model.max_length=128", "solver=spsa15", "solver.n_perts=2", "solver.steps=4",
              "solver.eval_every=2", "solver.batch_size=4", "solver.lr=1e-2", "solver.eps=1e-2",
              "solver.dist=rademacher", "task.num_train=16", "task.num_dev=8", "task.num_eval=8",
              f"task.data_dir={sst2_dir}", "checkpoint_every=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "main.py", *common, f"hydra.run.dir={tmp_path}/one"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(free_port()), "main.py", *common, "hardware.shard=fsdp",
                          f"hydra.run.dir={tmp_path}/two_${{oc.env:RANK}}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = {name: tmp_path / name for name in ("one", "two_0")}
    trajectory = {k: (d / "trajectory.jsonl").read_text() for k, d in runs.items()}
    assert trajectory["one"] == trajectory["two_0"] and len(trajectory["one"].splitlines()) == 1 + 4  # header
    summary = {k: json.loads((d / "summary.json").read_text()) for k, d in runs.items()}
    for key in ("best_dev_accuracy", "final_dev_accuracy", "test_accuracy", "best_step"):
        assert summary["two_0"][key] == summary["one"][key]
    ckpt = {k: torch.load(d / "checkpoint.pt", weights_only=False) for k, d in runs.items()}
    assert all(torch.equal(a, b) for a, b in zip(ckpt["two_0"]["params"], ckpt["one"]["params"]))
