"""Direction seeds fill the 64-bit Philox key (issue 15, item 9), the trajectory says which
derivation wrote it, and trajectories of the old 31-bit format (version 1, no header) still
replay bit for bit. (Kernels vs reference for seeds >= 2**32 and >= 2**63: tests/test_kernels.py.)"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch
import yaml

from zoexp import replay as R
from zoexp.model import load_model
from zoexp.solvers.base import derive_seed
from zoexp.solvers.mezo import MeZO


def old_derive_seed(base: int, *keys: int) -> int:
    """The derivation of trajectory format 1, written out independently: 4 bytes of BLAKE2b >> 1."""
    text = ":".join(str(k) for k in (base, *keys)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little") >> 1


def test_a_long_run_draws_no_seed_twice():
    """20k steps x 40 directions = 800k seeds: 64 bits repeat none (P ~ 2e-8); 31 bits repeat 136."""
    seeds = [derive_seed(0, step, k) for step in range(20_000) for k in range(40)]
    assert len(set(seeds)) == len(seeds)
    assert max(seeds) >= 2**63 and min(seeds) >= 0 and max(seeds) < 2**64
    old = {old_derive_seed(0, step, k) for step in range(20_000) for k in range(40)}
    assert len(seeds) - len(old) > 50  # the birthday repeats 64 bits removed (136 here; expected ~149)


def test_solvers_derive_64_bit_seeds_and_the_31_bit_ones_on_request():
    solver = MeZO(steps=1, seed=7)
    assert solver.direction_seed(3) == derive_seed(7, 3, 0) and solver.direction_seed(3) >= 2**31
    solver.set_seed_bits(31)
    assert solver.direction_seed(3) == old_derive_seed(7, 3, 0) == derive_seed(7, 3, 0, bits=31)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama with a word-level tokenizer, saved as a local model directory."""
    from tests.tiny_lm import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


class RandomLoss:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def loss(self, batch) -> float:
        return 2.0 + self.rng.random()


SOLVERS = {"mezo": {"_target_": "zoexp.solvers.mezo.MeZO", "steps": 4, "lr": 1e-2, "eps": 1e-2, "seed": 3},
           "subzero": {"_target_": "zoexp.solvers.subzero.SubZero", "steps": 4, "lr": 1e-2, "eps": 1e-2,
                       "n_perts": 2, "rank": 1, "update_interval": 2, "seed": 3}}


def write_run(run_dir: Path, model: Path, solver_cfg: dict, seed_bits: int) -> list[torch.Tensor]:
    """Train 4 steps (LoRA r=2 on q/v, initialised from hardware.seed as zoexp.run does) with
    `seed_bits` seeds and write the run dir a zoexp of that format would have written
    (version 1: no header); returns the trained weights and the records."""
    import hydra
    from omegaconf import OmegaConf

    from zoexp.run import build_peft

    cfg = OmegaConf.create({"model": {"name": str(model), "dtype": "fp32"}, "solver": solver_cfg,
                            "peft": {"_target_": "peft.LoraConfig", "task_type": "CAUSAL_LM", "r": 2,
                                     "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]},
                            "hardware": {"seed": 0, "device": "cpu"}})
    torch.manual_seed(0)
    bundle = load_model(str(model), "fp32", torch.device("cpu"), build_peft(cfg))
    solver = hydra.utils.instantiate(solver_cfg)
    solver.setup(bundle.params, RandomLoss(0))
    solver.set_seed_bits(seed_bits)
    records = [json.loads(json.dumps({"step": s, **solver.step([], s).record})) for s in range(4)]
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg)))
    header = [] if seed_bits == 31 else [{"format": "zoexp-trajectory", "version": 2, "seed_bits": 64}]
    (run_dir / "trajectory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in header + records))
    return [p.detach().clone() for p in bundle.params], records


@pytest.mark.parametrize("name", SOLVERS)
def test_old_31_bit_trajectory_still_replays(tmp_path, tiny_model, name):
    trained, records = write_run(tmp_path, tiny_model, SOLVERS[name], seed_bits=31)
    seeds = [s for r in records for s in (r["seeds"] if "seeds" in r else [r["seed"]])]
    expected = [old_derive_seed(3, step, k) for step in range(4) for k in range(len(seeds) // 4)]
    assert seeds == expected  # really the old format's seeds
    result = R.replay(tmp_path)
    assert result.step == 4 and all(torch.equal(a, b) for a, b in zip(result.params, trained))
    assert sum(not torch.equal(a, b) for a, b in zip(result.params, R.replay(tmp_path, 0).params)) > 0


@pytest.mark.parametrize("name", SOLVERS)
def test_64_bit_trajectory_replays(tmp_path, tiny_model, name):
    trained, records = write_run(tmp_path, tiny_model, SOLVERS[name], seed_bits=64)
    assert any(s >= 2**32 for r in records for s in (r["seeds"] if "seeds" in r else [r["seed"]]))
    result = R.replay(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(result.params, trained))
    # the same records read as version 1 (header removed) derive other SubZero subspaces
    if name == "subzero":
        lines = (tmp_path / "trajectory.jsonl").read_text().splitlines()[1:]
        (tmp_path / "trajectory.jsonl").write_text("\n".join(lines) + "\n")
        assert not all(torch.equal(a, b) for a, b in zip(R.replay(tmp_path).params, trained))


def test_a_run_of_the_old_format_resumes_with_its_31_bit_seeds(tmp_path):
    """A checkpoint and trajectory written before 64-bit seeds (no `seed_bits`, no header): the
    resumed run keeps deriving 31-bit seeds, so its trajectory continues the one it started."""
    from tests.fakes import Killed, make_loop

    def solver(bits: int) -> MeZO:
        s = MeZO(steps=10, batch_size=2, eval_every=0, lr=0.05, eps=1e-2)
        s.set_seed_bits(bits)
        return s

    reference, old = tmp_path / "reference", tmp_path / "old"
    reference.mkdir()
    old.mkdir()
    make_loop(reference, solver(31), [torch.nn.Parameter(torch.zeros(48))], every=3)[0].run()
    with pytest.raises(Killed):
        make_loop(old, solver(31), [torch.nn.Parameter(torch.zeros(48))], every=3, kill_at=14)[0].run()
    ckpt = torch.load(old / "checkpoint.pt", weights_only=False)
    del ckpt["seed_bits"]  # as the old code wrote it
    torch.save(ckpt, old / "checkpoint.pt")
    lines = (old / "trajectory.jsonl").read_text().splitlines(keepends=True)
    (old / "trajectory.jsonl").write_text("".join(lines[1:]))  # no header: format version 1
    make_loop(old, solver(64), [torch.nn.Parameter(torch.zeros(48))], every=3)[0].run()  # today's default
    records = [json.loads(line) for line in (old / "trajectory.jsonl").read_text().splitlines()]
    assert "format" not in records[0] and [r["step"] for r in records] == list(range(10))
    assert [r["seed"] for r in records] == [old_derive_seed(0, step, 0) for step in range(10)]
    expected = (reference / "trajectory.jsonl").read_text().splitlines()[1:]
    assert (old / "trajectory.jsonl").read_text().splitlines() == expected
