"""Forwards replayed from CUDA graphs give what the eager path gives (skipped without CUDA):
the same losses and the same trajectory for MeZO in exact and in-place mode, the same
evaluation scores, and a captured exact-mode forward follows every new perturbation."""

from __future__ import annotations

import copy

import pytest
import torch

from tasks.base import Example
from tests.conftest import NEGATIVE, POSITIVE
from tests.tiny_lm import tiny_model, tokenizer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _examples(n: int, seed: int = 0, longest: int | None = None) -> list[Example]:
    """SST-2-like examples of varied length; with `longest`, the first prompt has exactly
    that many words (so a batch's width is known)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            words += (POSITIVE + NEGATIVE)[int(torch.randint(12, (1,), generator=g))].split()
        if longest is not None:  # row 0 the longest, row 1 a single word: padding present
            words = (words * longest)[:{0: longest - 2, 1: 1}.get(i, min(len(words), longest - 2))]
        out.append(Example(prompt=" ".join(words) + " It was", candidates=(" terrible", " great"),
                           label=int(torch.randint(2, (1,), generator=g))))
    return out


def _objective(model, graphs: bool):
    from zoexp.objectives import CandidateScorer, ClassificationLoss
    scorer = CandidateScorer(model, tokenizer(), torch.device("cuda"), max_length=128,
                             cuda_graphs=graphs)
    return ClassificationLoss(scorer, task=None)


def _mezo_run(model, graphs: bool, exact: bool, dist: str, batches, lr: float = 1e-2):
    from zoexp.solvers.mezo import MeZO
    objective = _objective(model, graphs)
    solver = MeZO(steps=len(batches), batch_size=8, lr=lr, eps=1e-2, dist=dist, exact=exact)
    solver.setup([p for p in model.parameters()], objective)
    results = [solver.step(batch, t) for t, batch in enumerate(batches)]
    solver.settle()
    return ([r.loss for r in results], [r.record for r in results], objective.scorer.graphed,
            [p.detach().clone() for p in model.parameters()])


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("exact,dist", [(True, "gaussian"), (True, "rademacher"),
                                        (False, "rademacher")])
def test_graphed_mezo_is_the_eager_trajectory(arch, exact, dist):
    """Batches whose width is a bucket (16 tokens, 8 rows; left padding present, so both
    paths build the same attention mask): bit-identical losses, records and weights."""
    base = tiny_model(arch, torch.bfloat16, "cuda")
    batches = [_examples(8, seed=t, longest=16) for t in range(12)]
    eager = _mezo_run(copy.deepcopy(base), False, exact, dist, batches)
    graphed = _mezo_run(copy.deepcopy(base), True, exact, dist, batches)
    assert graphed[2].counts["replayed"] == 2 * len(batches) and graphed[2].counts["eager"] == 0
    assert graphed[0] == eager[0]
    assert graphed[1] == eager[1]
    assert all(torch.equal(a, b) for a, b in zip(graphed[3], eager[3]))
    assert len(set(eager[0])) == len(eager[0])   # every step saw another perturbation


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_graphed_mezo_with_padded_buckets_tracks_the_eager_run(arch):
    """Batches padded up to their bucket (more left padding, fewer rows): the same losses to
    float tolerance (attention sums over more, masked, keys) and the same seeds. (A small lr:
    at lr 1e-2 this 2-layer model's trajectory is chaotic, and float noise grows.)"""
    base = tiny_model(arch, torch.float32, "cuda")
    batches = [_examples(5 + t % 3, seed=100 + t) for t in range(10)]
    eager = _mezo_run(copy.deepcopy(base), False, True, "gaussian", batches, lr=1e-4)
    graphed = _mezo_run(copy.deepcopy(base), True, True, "gaussian", batches, lr=1e-4)
    assert graphed[2].counts["eager"] == 0 and graphed[2].counts["replayed"] == 20
    assert graphed[0] == pytest.approx(eager[0], rel=1e-4, abs=1e-5)
    assert [r["seed"] for r in graphed[1]] == [r["seed"] for r in eager[1]]


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_graphed_evaluation_scores_match(arch):
    """Evaluation goes through the same graphs: candidate scores of 37 examples in batches of
    8 (the last of 5 rows, padded to 8) equal the eager scores to float tolerance."""
    model = tiny_model(arch, torch.float32, "cuda")
    graphed, eager = _objective(model, True).scorer, _objective(model, False).scorer
    data = _examples(37, seed=7)
    with torch.no_grad():
        for start in range(0, 37, 8):
            batch = data[start:start + 8]
            torch.testing.assert_close(graphed.score(batch), eager.score(batch), rtol=1e-4,
                                       atol=1e-4)
    assert graphed.graphed.counts["eager"] == 0


def test_captured_exact_forward_follows_the_engine():
    """One graph, captured under seed 1, replayed under seeds 2 and 1 and theta: each time the
    eager forward's logits, bit for bit."""
    from zoexp.perturb import PerturbationEngine
    model = tiny_model("llama", torch.bfloat16, "cuda")
    graphed, eager = _objective(model, True).scorer, _objective(model, False).scorer
    engine = PerturbationEngine(list(model.parameters()), dist="gaussian")
    batch = _examples(8, seed=3, longest=16)
    seen = []
    with torch.no_grad():
        for seed in (1, 2, 1, None):
            if seed is not None:
                engine.perturb(seed, 1e-2)
            got, want = graphed.score(batch), eager.score(batch)
            if seed is not None:
                engine.restore(seed, 1e-2)
            assert torch.equal(got, want)
            seen.append(got)
    assert graphed.graphed.counts["captured"] == 2  # perturbed, plain
    assert not torch.equal(seen[0], seen[1]) and torch.equal(seen[0], seen[2])


def test_replaced_storage_is_recaptured():
    model = tiny_model("opt", torch.float32, "cuda")
    graphed, eager = _objective(model, True).scorer, _objective(model, False).scorer
    batch = _examples(8, seed=4)
    with torch.no_grad():
        graphed.score(batch)
        for p in model.parameters():
            p.data = p.data * 1.5
        torch.testing.assert_close(graphed.score(batch), eager.score(batch), rtol=1e-4, atol=1e-4)
    assert graphed.graphed.counts["captured"] == 2


def test_host_side_directions_run_eagerly():
    """SubZero's exact low-rank directions are computed on the host per read: its forwards
    are not captured, and the run is the eager run. (Sequential probes: on a GPU SubZero
    batches its probes by default, which runs no per-probe forward to capture.)"""
    from zoexp.solvers.subzero import SubZero
    runs = []
    base = tiny_model("llama", torch.float32, "cuda")
    batches = [_examples(8, seed=t) for t in range(3)]
    for graphs in (False, True):
        model = copy.deepcopy(base)
        objective = _objective(model, graphs)
        solver = SubZero(steps=3, batch_size=8, lr=1e-2, eps=1e-2, rank=2, batched_probes=False)
        solver.setup(list(model.parameters()), objective)
        runs.append([solver.step(b, t).loss for t, b in enumerate(batches)])
        if graphs:
            assert objective.scorer.graphed.counts["eager"] == 6
    assert runs[0] == runs[1]


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_gpu_aligned_table_sweep_matches_reference(dist):
    """The one-launch sweep over many 16-byte-aligned tensors (vectorised through hints) and
    misaligned views, on the GPU, against the reference."""
    from kernels import reference as R
    from kernels import sweep as K
    from kernels.sweep_op import SweepOp
    sizes = [4096 * 37, 2048, 16, 300_000, 4_000_000]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += n
    g = torch.Generator().manual_seed(0)
    base = [(torch.randn(n, generator=g) * 0.02).to(torch.bfloat16) for n in sizes]
    gpu = [t.cuda() for t in base]
    assert all(K._aligned(t, o, t) for t, o in zip(gpu, offsets))
    op = SweepOp(seed1=3, restore_scale=1e-3, coef=1e-4, decay=1e-2, perturb_scale=-1e-3, seed2=4)
    K.sweep(gpu, offsets, op, dist)
    R.sweep(base, offsets, op, dist)
    for x, y in zip(gpu, base):
        mismatch = (x.cpu() != y).float().mean().item()
        assert mismatch == 0.0 if dist == "rademacher" else mismatch < 1e-3


def test_cli_mezo_takes_the_graphed_path(tmp_path, sst2_dir):
    """`python main.py hardware=cuda peft=none solver=mezo` on a tiny model: training steps and
    evaluation replay graphs (the log's summary line), and the run finishes."""
    import json

    from tests.conftest import run_main
    from tests.tiny_lm import save_tiny_model
    model_dir = save_tiny_model(tmp_path / "model")
    run_dir = tmp_path / "run"
    proc = run_main("model=hf", f"model.name={model_dir}", "hardware=cuda", "peft=none",
                    "solver=mezo", "solver.steps=20", "solver.eval_every=10", "solver.lr=1e-4",
                    f"task.data_dir={sst2_dir}", "task.num_train=32", "task.num_dev=16",
                    "task.num_eval=16", f"hydra.run.dir={run_dir}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr + "".join(p.read_text() for p in run_dir.glob("*.log"))
    line = next(l for l in log.splitlines() if "cuda graphs:" in l and "replayed" in l)
    assert " 0 eager forwards" in line, line
    replayed = int(line.split(" replayed")[0].split()[-1])
    assert replayed >= 40, line   # 2 per step, plus the evaluations
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 20
