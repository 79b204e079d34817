"""Several processes share one ZO run (`zoexp.distributed`): each probes its share of the
directions, only the losses cross between them, and the run is the one-process run, bit for bit.

Real process groups on CPU (gloo): two processes spawned here, and `torchrun` end to end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import ROOT
from tests.test_solvers import make
from zoexp.distributed import Ranks, close, init_ranks
from zoexp.errors import ConfigError
from zoexp.solvers.mezo import MeZO
from zoexp.solvers.spsa import SPSA
from zoexp.solvers.spsa15 import SPSA15
from zoexp.solvers.subzero import SubZero

SOLVERS = {"spsa": (SPSA, {}), "spsa15": (SPSA15, {}), "subzero": (SubZero, {"rank": 2})}
STEPS, N_PERTS = 3, 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(name: str, ranks: Ranks) -> dict:
    """STEPS steps of solver `name` on the closed-form quadratic, bf16 weights."""
    cls, kw = SOLVERS[name]
    start = (torch.linspace(-1, 1, 48) * 0.7).to(torch.bfloat16).reshape(6, 8)
    solver, objective = make(cls, params=[torch.nn.Parameter(start)], n_perts=N_PERTS, eps=1e-2,
                             lr=1e-2, **kw)
    solver.distribute(ranks)
    losses = [solver.step([None], t).loss for t in range(STEPS)]
    return {"params": solver.params[0].detach().clone(), "losses": losses,
            "forward_passes": objective.scorer.forward_passes}


def _worker(rank: int, world: int, port: int, name: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    ranks, _ = init_ranks(torch.device("cpu"))
    torch.save(train(name, ranks), os.path.join(out_dir, f"{rank}.pt"))
    close(ranks)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_two_processes_take_the_one_process_steps(name, tmp_path):
    mp.spawn(_worker, args=(2, free_port(), name, str(tmp_path)), nprocs=2)
    alone = train(name, Ranks())
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    for got in ranks:
        assert torch.equal(got["params"], alone["params"])  # every rank, bit for bit
        assert got["losses"] == alone["losses"]
    assert not torch.equal(alone["params"], (torch.linspace(-1, 1, 48) * 0.7).to(torch.bfloat16).reshape(6, 8))
    # directions 0, 2, 4 on rank 0 and 1, 3 on rank 1 (+ f0 on each rank for 1.5-SPSA)
    extra = 1 if name == "spsa15" else 0
    assert [r["forward_passes"] for r in ranks] == [STEPS * (6 + extra), STEPS * (4 + extra)]
    assert alone["forward_passes"] == STEPS * (2 * N_PERTS + extra)


@pytest.mark.parametrize("cls,kw,field", [
    (SPSA, {"n_perts": 3}, "solver.n_perts"),
    (SPSA, {"n_perts": 8, "exact": False}, "solver.exact"),
    (MeZO, {}, "processes"),
])
def test_a_run_that_cannot_split_refuses_before_the_model(cls, kw, field):
    solver = cls(steps=1, **kw)
    with pytest.raises(ConfigError) as err:
        solver.distribute(Ranks(rank=1, world=4))
    assert err.value.field == field and "\n" not in str(err.value)


def test_share_deals_every_direction_once():
    shares = [Ranks(r, 3).share(8) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]


@pytest.mark.slow
def test_torchrun_end_to_end_matches_one_process(tmp_path, sst2_dir):
    """`torchrun --nproc-per-node 2 main.py solver=spsa ...` on the default model: one run dir
    (rank 0's), the same trajectory as one process, forward passes counted over both."""
    common = ["solver=spsa", "solver.n_perts=4", "solver.steps=2", "solver.batch_size=4",
              "task.num_train=16", "task.num_dev=8", "task.num_eval=8",
              f"task.data_dir={sst2_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "main.py", *common, f"hydra.run.dir={tmp_path}/one"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(free_port()), "main.py", *common,
                          f"hydra.run.dir={tmp_path}/two_${{oc.env:RANK}}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    assert not (tmp_path / "two_1").exists()  # rank 1's own Hydra dir is removed; it wrote nothing
    runs = {name: tmp_path / name for name in ("one", "two_0")}
    trajectory = {k: (d / "trajectory.jsonl").read_text() for k, d in runs.items()}
    assert trajectory["one"] == trajectory["two_0"] and len(trajectory["one"].splitlines()) == 1 + 2  # header, 2 steps
    summary = {k: json.loads((d / "summary.json").read_text()) for k, d in runs.items()}
    assert summary["two_0"]["fwd_passes"] == summary["one"]["fwd_passes"] == 2 * 2 * 4
    for key in ("best_dev_accuracy", "test_accuracy"):
        assert summary["two_0"][key] == summary["one"][key]
    assert two.stdout.count("run dir:") == 1  # one result line, from rank 0


@pytest.mark.slurm
@pytest.mark.slow
def test_two_slurm_tasks_share_one_run(tmp_path, sst2_dir):
    """hydra/launcher=slurm with hardware.tasks_per_node=2 on the local cluster: submitit starts
    two tasks, they find each other, and the run equals the one-process run."""
    from tests.conftest import run_main
    from tests.test_resume import cluster_ready

    reason = cluster_ready()
    if reason:
        pytest.skip(reason)
    common = ["hardware=cpu", "peft=prompt", "solver=spsa", "solver.n_perts=2", "solver.steps=2",
              "solver.batch_size=2", "task.num_train=4", "task.num_dev=4", "task.num_eval=4",
              f"task.data_dir={sst2_dir}"]
    one = run_main(*common, f"hydra.run.dir={tmp_path}/one")
    assert one.returncode == 0, one.stderr[-3000:]
    sweep = tmp_path / "sweep"
    two = run_main("-m", "hydra/launcher=slurm", *common, "hardware.cpus_per_task=1",
                   "hardware.mem_gb=4", "hardware.tasks_per_node=2", f"hydra.sweep.dir={sweep}",
                   timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "process 1 of 2" in logs and "process 2 of 2" in logs  # two tasks, one group
    run = sweep / "0"
    assert (run / "trajectory.jsonl").read_text() == (tmp_path / "one" / "trajectory.jsonl").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fwd_passes"] == 2 * 2 * 2 and summary["steps"] == 2
