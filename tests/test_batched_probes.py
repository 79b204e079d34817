"""Batched probes (`zoexp.batched_probes`): a step's probes as row groups of one forward.

Tiny random Llama models (the default tokenizer) wrapped by peft: per-probe losses from one
batched forward equal the sequential probes' for LoRA, prompt and prefix tuning and SubZero;
the per-probe values are bit for bit what the engine's virtual perturbation reads (the torch
reference, and the fused Triton kernel under TRITON_INTERPRET=1); steps keep their seeds, and
the trajectory of a batched run replays bit-exactly; chunks, out-of-memory halving, a guard
against parameter reads the row groups do not cover, and the early one-line errors.
"""

from __future__ import annotations

import json
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of kernels.sweep

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, assert_fails_early, run_main
from zoexp import batched_probes as B
from zoexp.errors import ConfigError
from zoexp.objectives import CandidateScorer, build_objective
from zoexp.perturb import PerturbationEngine
from zoexp.probes import Probe, SequentialProbes, central_pairs
from zoexp.solvers.mezo import MeZO
from zoexp.solvers.spsa15 import SPSA15
from zoexp.solvers.subzero import SubZero

# eps large enough that the probes' losses differ by >> the float tolerance (a tiny random
# model hardly notices its virtual tokens: they get a larger one)
EPS = {"lora": 0.2, "none": 0.2, "prompt": 4.0, "prefix": 4.0}
TOL = dict(rel=2e-5, abs=2e-6)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from zoexp.model import resolve_model_source

    name = OmegaConf.load(ROOT / "conf" / "model" / "smollm2-135m.yaml").name
    tok = AutoTokenizer.from_pretrained(resolve_model_source(name))
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    return tok


@pytest.fixture(scope="module")
def task(sst2_dir):
    from tasks.sst2 import SST2

    return SST2(data_dir=str(sst2_dir), num_train=8, num_dev=0, num_eval=1)


def tiny(tokenizer, peft: str, dtype=torch.float32):
    """A 2-layer random Llama, wrapped by peft (`none`: every weight trains)."""
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).to(dtype).eval()
    configs = {"lora": lambda: LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                          target_modules=["q_proj", "v_proj"], init_lora_weights=False),
               "prompt": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
               "prefix": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)}
    if peft == "none":
        return model.requires_grad_(True)
    return get_peft_model(model, configs[peft]())


def setup(tokenizer, task, peft: str, dtype=torch.float32):
    model = tiny(tokenizer, peft, dtype)
    scorer = CandidateScorer(model, tokenizer, torch.device("cpu"), max_length=64)
    objective = build_objective("classification", scorer, task)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, objective


def solver(cls, params, objective, batched, peft="lora", **kw):
    kw = {"steps": 4, "batch_size": 4, "lr": 1e-2, "eps": EPS[peft], "peft_target": "peft", **kw}
    if cls is not MeZO:
        kw.setdefault("n_perts", 3)
    s = cls(batched_probes=batched, **kw)
    s.setup(params, objective)
    return s


def probes_of(s, step: int = 0) -> list[Probe]:
    if isinstance(s, SubZero):
        s.low_rank.use_subspace(s.subspace_index(step))
    seeds = s.seeds(step) if hasattr(s, "seeds") else [s.direction_seed(step)]
    return [Probe()] + central_pairs(seeds, s.eps)


CASES = [("lora", SPSA15, {}), ("prompt", SPSA15, {}), ("prefix", SPSA15, {}),
         ("lora", SubZero, {"rank": 2}), ("prompt", SubZero, {"rank": 2}),
         ("prefix", SubZero, {"rank": 2}), ("none", SubZero, {"rank": 2}), ("lora", MeZO, {}),
         ("lora", SPSA15, {"dist": "rademacher"})]


@pytest.mark.parametrize("peft,cls,kw", CASES,
                         ids=[f"{p}-{c.__name__}{'-' + k['dist'] if 'dist' in k else ''}" for p, c, k in CASES])
def test_batched_losses_equal_the_sequential_probes(tokenizer, task, peft, cls, kw):
    _, params, objective = setup(tokenizer, task, peft)
    batch = task.sample()["train"][:4]
    before = [p.detach().clone() for p in params]
    seq = solver(cls, params, objective, False, peft, **kw)
    bat = solver(cls, params, objective, True, peft, **kw)
    assert isinstance(seq.probes, SequentialProbes) and isinstance(bat.probes, B.BatchedProbes)
    probes = probes_of(seq)
    assert probes_of(bat) == probes  # (and SubZero's subspace set on both)
    expected = seq.probes.losses(batch, probes)
    passes = objective.scorer.forward_passes
    got = bat.probes.losses(batch, probes)
    assert objective.scorer.forward_passes - passes == len(probes)  # one per probe, as sequential
    assert got == pytest.approx(expected, **TOL)
    # the probes differ far more than batched and sequential do: a row group that saw theta,
    # or a neighbour's probe, would be off by at least `spread`
    spread = min(abs(a - b) for i, a in enumerate(expected) for b in expected[i + 1:])
    assert max(abs(a - b) for a, b in zip(got, expected)) < spread / 100, (got, expected)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # nothing written


def test_prompt_tuning_rows_each_see_their_own_virtual_tokens(tokenizer, task):
    """One row group's virtual tokens changed alone changes that group's loss alone."""
    model, params, objective = setup(tokenizer, task, "prompt")
    batch = task.sample()["train"][:4]
    bat = solver(SPSA15, params, objective, True, "prompt")
    state = B.GroupValues(3, values={0: params[0].detach().expand(3, -1, -1).clone()})
    state.values[0][1] += 0.5
    with bat.probes.grouped(state):
        grouped = objective.group_losses(batch, 3)
    plain = objective.loss(batch)
    with torch.no_grad():
        params[0] += 0.5
        shifted = objective.loss(batch)
        params[0] -= 0.5
    assert [grouped[0], grouped[2]] == pytest.approx([plain, plain], **TOL)
    assert grouped[1] == pytest.approx(shifted, **TOL) and abs(shifted - plain) > 1e-4


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_values_are_bit_for_bit_what_the_engine_reads(dist, dtype, backend):
    """Per-probe copies (reference loop, or the fused kernel) == the engine's virtual
    perturbation read parameter by parameter, in the parameter dtype."""
    torch.manual_seed(1)
    shapes = [(4, 40), (40, 4), (3, 129), (7,)]
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"  # compiled
    params = [torch.nn.Parameter(torch.randn(s).to(dtype).to(device)) for s in shapes]
    engine = PerturbationEngine(params, dist=dist, backend=backend)
    probes = [Probe(11, 0.3), Probe(), Probe(11, -0.3), Probe(12345, 1e-3),
              Probe(2**40 + 7, 0.2), Probe(2**63 + 5, -0.2), Probe(2**64 - 1, 0.1)]  # 64-bit seeds
    state = B.EngineValues(engine, list(range(len(params))))(probes)
    assert B.EngineValues(engine, []).fused == (backend == "triton")
    for g, probe in enumerate(probes):
        if probe.seed is not None:
            engine.perturb(probe.seed, probe.scale)
        for i, p in enumerate(params):
            want = engine._materialize(i) if probe.seed is not None else p.detach()
            assert torch.equal(state.values[i][g], want), (g, i)
        if probe.seed is not None:
            engine.restore(probe.seed, probe.scale)


def test_subzero_copies_are_exact_directions_values(tokenizer, task):
    """SubZero's non-matrix parameters (norm weights with peft=none) get ExactDirections'
    rnd(theta + scale z) per probe; its matrices the factors (U, scale * S, V)."""
    _, params, objective = setup(tokenizer, task, "none")
    s = solver(SubZero, params, objective, True, "none", rank=2)
    probes = probes_of(s)
    values = s.probes.make_values(probes)
    vectors = [i for i, p in enumerate(params) if p.dim() == 1]
    matrices = [i for i, p in enumerate(params) if p.dim() == 2]
    assert sorted(values.values) == vectors and sorted(values.factors) == matrices
    for g, probe in enumerate(probes[1:], start=1):
        s.directions.perturb(probe.seed, probe.scale)
        for i in vectors:
            assert torch.equal(values.values[i][g], s.directions._materialize(i))
        for i in matrices[:3]:
            u, core, v = values.factors[i]
            z = s.low_rank.direction(probe.seed, i)
            assert torch.allclose(probe.scale * z, u @ core[g] @ v.T, atol=1e-6)
        s.directions.restore(probe.seed, probe.scale)


@pytest.mark.parametrize("peft,cls", [("lora", SPSA15), ("prefix", SubZero)])
def test_steps_keep_their_seeds_and_replay_bit_exactly(tokenizer, task, peft, cls):
    kw = {"rank": 2} if cls is SubZero else {}
    batch = task.sample()["train"][:4]
    runs = {}
    for batched in (False, True):
        _, params, objective = setup(tokenizer, task, peft)
        start = [p.detach().clone() for p in params]
        s = solver(cls, params, objective, batched, peft, **kw)
        records = [json.loads(json.dumps(s.step(batch, t).record)) for t in range(3)]
        runs[batched] = (start, records, [p.detach().clone() for p in params])
    (start, seq_records, _), (_, bat_records, trained) = runs[False], runs[True]
    assert [r["seeds"] for r in bat_records] == [r["seeds"] for r in seq_records]
    for a, b in zip(bat_records, seq_records):
        assert a["coefs"] == pytest.approx(b["coefs"], rel=1e-3, abs=1e-7)
    _, fresh, _ = setup(tokenizer, task, peft)
    assert all(torch.equal(p, s) for p, s in zip(fresh, start))
    replayer = cls(steps=4, batch_size=4, lr=1e-2, eps=EPS[peft], n_perts=3, **kw)
    replayer.setup(fresh, None)
    with torch.no_grad():
        for record in bat_records:
            replayer.replay(record)
    assert not all(torch.equal(p, s) for p, s in zip(fresh, start))
    assert all(torch.equal(p, t) for p, t in zip(fresh, trained))


class CountingObjective:
    """The objective, counting the groups of each grouped forward; `fail_above` groups
    raise the CUDA out-of-memory error (a fault injected on a CPU)."""

    def __init__(self, objective, fail_above: int | None = None) -> None:
        self.inner, self.fail_above, self.passes = objective, fail_above, []
        self.scorer = objective.scorer

    def group_losses(self, batch, groups):
        if self.fail_above is not None and groups > self.fail_above:
            raise torch.cuda.OutOfMemoryError("injected")
        self.passes.append(groups)
        return self.inner.group_losses(batch, groups)

    def loss(self, batch):
        return self.inner.loss(batch)


@pytest.mark.parametrize("chunk,fail_above,passes", [
    (2, None, [2, 2, 2, 1]),        # probe_chunk caps a pass
    (8, 3, [3, 3, 1]),              # 7 groups run out of memory (> 3): halved, and remembered
    ("auto", None, "cpu"),          # CPU_PASS_TOKENS of tokens per pass
])
def test_chunks_run_as_few_passes_as_fit(tokenizer, task, monkeypatch, chunk, fail_above, passes):
    _, params, objective = setup(tokenizer, task, "lora")
    batch = task.sample()["train"][:4]
    counting = CountingObjective(objective, fail_above)
    seq = solver(SPSA15, params, objective, False)
    bat = solver(SPSA15, params, counting, True, probe_chunk=chunk)
    if passes == "cpu":
        tokens = bat.probes.tokens_per_group(batch)
        monkeypatch.setattr(B, "CPU_PASS_TOKENS", 3 * tokens + 1)
        passes = [3, 3, 1]
    probes = probes_of(seq)
    assert bat.probes.losses(batch, probes) == pytest.approx(seq.probes.losses(batch, probes), **TOL)
    assert counting.passes == passes
    if fail_above:  # the learnt limit holds for the next step
        counting.passes.clear()
        bat.probes.losses(batch, probes)
        assert counting.passes == [3, 3, 1]


def read_lora_weight_elsewhere(model):
    """A forward hook that reads a LoRA weight outside its module (as a model reusing a
    weight somewhere the row groups are not arranged would)."""
    weight = next(p for n, p in model.named_parameters() if "lora_A" in n)
    seen = []
    handle = model.get_base_model().model.norm.register_forward_hook(
        lambda *_: seen.append(float(weight.sum())))
    return handle, seen


def test_a_parameter_read_outside_its_module_falls_back_or_refuses(tokenizer, task):
    model, params, objective = setup(tokenizer, task, "lora")
    batch = task.sample()["train"][:4]
    handle, seen = read_lora_weight_elsewhere(model)
    try:
        seq = solver(SPSA15, params, objective, False)
        auto = solver(SPSA15, params, objective, "auto")
        auto.probes = B.BatchedProbes(auto.directions, objective, fallback=seq.probes)  # auto's
        probes = probes_of(seq)                                    # choice on a GPU
        expected = seq.probes.losses(batch, probes)
        assert auto.probes.losses(batch, probes) == expected and auto.probes.failed
        strict = solver(SPSA15, params, objective, True)
        with pytest.raises(ConfigError, match="read outside the modules that own it") as err:
            strict.probes.losses(batch, probes)
        assert err.value.field == "solver.batched_probes" and "\n" not in str(err.value)
        # the guard is gone again: the hook reads the weight in a plain forward
        objective.loss(batch)
        assert seen
    finally:
        handle.remove()


def test_auto_keeps_sequential_probes_on_a_cpu_and_where_batching_does_not_apply(tokenizer, task):
    _, params, objective = setup(tokenizer, task, "lora")
    assert isinstance(solver(SPSA15, params, objective, "auto").probes, SequentialProbes)
    _, params, objective = setup(tokenizer, task, "none")
    assert isinstance(solver(SPSA15, params, objective, "auto", "none", peft_target=None).probes,
                      SequentialProbes)
    with pytest.raises(ConfigError, match="does not pay"):  # true after the load: the copies
        solver(SPSA15, params, objective, True, "none")     # would be the whole model
    replaying = SPSA15(steps=1, batched_probes=True, peft_target="peft")
    replaying.setup(params, None)  # zoexp.replay: no objective, nothing to batch
    assert isinstance(replaying.probes, SequentialProbes)


@pytest.mark.parametrize("cls", [SPSA15, MeZO, SubZero])
def test_bad_options_raise_before_setup(cls):
    with pytest.raises(ConfigError) as err:
        cls(steps=1, batched_probes="yes")
    assert err.value.field == "solver.batched_probes" and "auto, true or false" in str(err.value)
    with pytest.raises(ConfigError) as err:
        cls(steps=1, probe_chunk=0)
    assert err.value.field == "solver.probe_chunk"
    if cls is SubZero:  # low-rank directions batch with every weight training
        cls(steps=1, batched_probes=True, peft_target=None)
    else:
        with pytest.raises(ConfigError, match="peft=none"):
            cls(steps=1, batched_probes=True, peft_target=None)


@pytest.mark.parametrize("overrides,expected,allowed", [
    (["solver=spsa15", "peft=none", "solver.batched_probes=true"], "solver.batched_probes",
     "allowed: auto or false"),
    (["solver=mezo", "peft=none", "solver.batched_probes=true"], "solver.batched_probes",
     "allowed: auto or false"),
    (["solver=spsa", "solver.batched_probes=sometimes"], "solver.batched_probes",
     "allowed: auto, true or false"),
    (["solver=spsa15", "solver.probe_chunk=0"], "solver.probe_chunk", "allowed: auto or an integer"),
])
def test_the_cli_refuses_before_the_model_loads(tmp_path, overrides, expected, allowed):
    assert_fails_early(tmp_path, overrides, expected, allowed)


@pytest.mark.slow
def test_a_batched_run_writes_the_sequential_seeds_and_replays(tmp_path, sst2_dir):
    """The CLI end to end with the default model: batched and sequential runs record the same
    seeds (coefficients to float tolerance), and the batched run replays bit-exactly."""
    from zoexp import replay as R
    from zoexp.checkpoint import read_trajectory

    common = ["hardware=cpu", "peft=lora", "solver=spsa15", f"task.data_dir={sst2_dir}",
              "solver.steps=3", "solver.n_perts=2", "solver.batch_size=2", "solver.eval_every=0",
              "task.num_train=4", "task.num_dev=2", "task.num_eval=2", "checkpoint_every=2"]
    records = {}
    for batched in ("false", "true"):
        run_dir = tmp_path / batched
        proc = run_main(*common, f"solver.batched_probes={batched}", f"hydra.run.dir={run_dir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        _, lines = read_trajectory(run_dir / "trajectory.jsonl")
        records[batched] = [record for _, record in lines]
    assert len(records["true"]) == 3
    assert [r["seeds"] for r in records["true"]] == [r["seeds"] for r in records["false"]]
    for a, b in zip(records["true"], records["false"]):
        assert a["coefs"] == pytest.approx(b["coefs"], rel=1e-3, abs=1e-9)
    assert R.main([str(tmp_path / "true"), "--verify"]) == 0


def _load_tokenizer():
    from transformers import AutoTokenizer

    from zoexp.model import resolve_model_source

    tok = AutoTokenizer.from_pretrained(resolve_model_source(
        OmegaConf.load(ROOT / "conf" / "model" / "smollm2-135m.yaml").name))
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    return tok


def train_batched(sst2_dir: str, ranks) -> dict:
    """Two 1.5-SPSA steps with batched probes on the tiny LoRA model, as rank `ranks`."""
    from tasks.sst2 import SST2

    task = SST2(data_dir=sst2_dir, num_train=8, num_dev=0, num_eval=1)
    _, params, objective = setup(_load_tokenizer(), task, "lora")
    s = solver(SPSA15, params, objective, True)
    s.distribute(ranks)
    batch = task.sample()["train"][:4]
    records = [s.step(batch, t).record for t in range(2)]
    return {"params": [p.detach().clone() for p in params], "records": records,
            "forward_passes": objective.scorer.forward_passes}


def _batched_worker(rank: int, world: int, port: int, sst2_dir: str, out_dir: str) -> None:
    from zoexp.distributed import close, init_ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    ranks, _ = init_ranks(torch.device("cpu"))
    torch.save(train_batched(sst2_dir, ranks), os.path.join(out_dir, f"{rank}.pt"))
    close(ranks)


def test_each_process_batches_its_share_of_the_probes(tmp_path, sst2_dir):
    """Two processes: each batches its own directions (f0 + 2 of 3 pairs on rank 0, f0 + 1 on
    rank 1); the ranks end bit-identical, and with the one-process run's seeds and update to
    float tolerance (a different number of row groups may sum in another order)."""
    import torch.multiprocessing as mp

    from tests.test_distributed import free_port
    from zoexp.distributed import Ranks

    mp.spawn(_batched_worker, args=(2, free_port(), str(sst2_dir), str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    alone = train_batched(str(sst2_dir), Ranks())
    assert all(torch.equal(a, b) for a, b in zip(got[0]["params"], got[1]["params"]))
    assert got[0]["records"] == got[1]["records"]
    assert [r["forward_passes"] for r in got] == [2 * 5, 2 * 3] and alone["forward_passes"] == 2 * 7
    for mine, one in zip(got[0]["records"], alone["records"]):
        assert mine["seeds"] == one["seeds"]
        assert mine["coefs"] == pytest.approx(one["coefs"], rel=1e-3, abs=1e-7)
    for a, b in zip(got[0]["params"], alone["params"]):
        assert torch.allclose(a, b, atol=1e-6)


# Every seeded solver of the field (conf/solver): its probes batch to the sequential losses, or
# `batched_probes=true` refuses in one line (and `auto` probes sequentially). Low-rank directions
# of another form than SubZero's (LOZO's U V^T, ZO-Muon's P U) batch through the same
# U S V^T factors (`LowRankDirections.factors`).
FIELD = {"lozo": ("LOZO", True), "lozo_m": ("LOZOM", True), "zo_muon": ("ZOMuon", True),
         "zo_sign": ("ZOSign", True), "zo_cons": ("ZOCons", True), "zo_adam": ("ZOAdam", True),
         "hizoo": ("HiZOO", False), "sparse_mezo": ("SparseMeZO", False),
         "zo_adamu": ("ZOAdaMU", False), "subzero_adamu": ("SubZeroAdaMU", False)}


@pytest.mark.parametrize("peft", ["lora", "none"])
@pytest.mark.parametrize("module", sorted(FIELD))
def test_every_field_solver_batches_exactly_or_refuses(tokenizer, task, module, peft):
    import importlib

    name, batches = FIELD[module]
    cls = getattr(importlib.import_module(f"zoexp.solvers.{module}"), name)
    low_rank = module in ("lozo", "lozo_m", "zo_muon", "subzero_adamu")
    if peft == "none" and not low_rank and batches:
        batches = False  # dense directions over every weight: a copy per probe does not pay
    _, params, objective = setup(tokenizer, task, peft)
    kw = {"rank": 2} if low_rank else {}
    if module in ("zo_cons", "zo_adamu", "subzero_adamu"):
        kw["n_perts"] = 1
    if not batches:
        with pytest.raises(ConfigError, match="solver.batched_probes: got true"):
            solver(cls, params, objective, True, peft, **kw)
        assert isinstance(solver(cls, params, objective, "auto", peft, **kw).probes, SequentialProbes)
        return
    seq = solver(cls, params, objective, False, peft, **kw)
    bat = solver(cls, params, objective, True, peft, **kw)
    assert isinstance(bat.probes, B.BatchedProbes)
    for s in (seq, bat):
        if isinstance(s, SubZero):
            s.low_rank.use_subspace(s.subspace_index(0))
    probes = [Probe()] + central_pairs(seq.seeds(0), seq.eps)
    batch = task.sample()["train"][:4]
    expected, got = seq.probes.losses(batch, probes), bat.probes.losses(batch, probes)
    assert got == pytest.approx(expected, **TOL)
    spread = min(abs(a - b) for i, a in enumerate(expected) for b in expected[i + 1:])
    assert max(abs(a - b) for a, b in zip(got, expected)) < spread / 100, (got, expected)


class _RaisingObjective:
    """A loss that reads the weights, and raises on its `fail_at`-th forward (an OOM, an
    interrupt mid-probe)."""

    def __init__(self, params, fail_at: int) -> None:
        self.params, self.fail_at, self.calls = params, fail_at, 0

    def loss(self, batch) -> float:
        self.calls += 1
        if self.calls == self.fail_at:
            raise MemoryError("injected: out of memory in the forward")
        return float(sum(p.sum() for p in self.params))


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_forward_that_raises_leaves_theta_in_the_weights(exact, fail_at):
    """In place (exact=False) theta + eps z is written into the weights; a probe that raises
    must not leave it there, or a checkpoint or evaluation taken after the error reads it. The
    virtual (exact) engine must not stay active either."""
    from zoexp.perturb import capture_state

    torch.manual_seed(0)
    params = [torch.randn(32, 8), torch.randn(8)]
    before = [p.clone() for p in params]
    engine = PerturbationEngine(params, exact=exact, backend="torch")
    probes = SequentialProbes(engine, _RaisingObjective(params, fail_at))
    with pytest.raises(MemoryError):
        probes.losses(None, central_pairs([11, 12], 1e-3))
    assert engine.active is None and capture_state() == ()
    for p, b in zip(params, before):
        # In place, restore is exact up to rounding of theta + eps z - eps z (the module doc).
        torch.testing.assert_close(p, b, rtol=0, atol=0 if exact else 1e-6)
    # The engine is usable again: a full round of probes runs and restores.
    probes.objective.fail_at = -1
    assert len(probes.losses(None, central_pairs([11, 12], 1e-3))) == 4
