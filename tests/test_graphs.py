"""CUDA-graph forwards, what can be checked without a GPU: the option and its one-line errors,
that a bucketed (padded) batch gives the logits of the batch itself, and what the engine
reports to the graph layer (`capture_state`). The captured path itself: tests/test_gpu_graphs.py."""

from __future__ import annotations

import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of kernels.sweep

from tests.conftest import assert_fails_early  # noqa: E402
from tests.tiny_lm import tiny_model  # noqa: E402
from zoexp.errors import ConfigError  # noqa: E402
from zoexp.graphs import (_Captured, bucket_length, bucket_rows, forward_logits,  # noqa: E402
                          resolve_cuda_graphs)
from zoexp.perturb import ExactDirections, PerturbationEngine, capture_state  # noqa: E402

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_option_values():
    from zoexp.solvers.fo_sgd import FOSGD
    from zoexp.solvers.mezo import MeZO
    from zoexp.solvers.subzero import SubZero
    from zoexp.solvers.zeroshot import ZeroShot

    assert resolve_cuda_graphs("auto", CUDA) is True
    assert resolve_cuda_graphs("auto", CPU) is False
    assert resolve_cuda_graphs(False, CUDA) is False
    assert resolve_cuda_graphs(True, CUDA, MeZO(steps=1)) is True
    assert resolve_cuda_graphs(True, CUDA, SubZero(steps=1, exact=False)) is True
    assert resolve_cuda_graphs(True, CUDA, ZeroShot()) is True  # evaluation only: every forward
    for value in ("yes", 1, None):
        with pytest.raises(ConfigError, match="allowed: auto, true, false"):
            resolve_cuda_graphs(value, CUDA)
    with pytest.raises(ConfigError, match="got true on device cpu"):
        resolve_cuda_graphs(True, CPU)
    for solver in (FOSGD(steps=1), SubZero(steps=1, exact=True)):
        with pytest.raises(ConfigError, match=f"got true with {type(solver).__name__}"):
            resolve_cuda_graphs(True, CUDA, solver)
    # auto never refuses: those forwards just run eagerly
    assert resolve_cuda_graphs("auto", CUDA, FOSGD(steps=1)) is True


@pytest.mark.parametrize("overrides,expected", [
    (["hardware.cuda_graphs=yes"], "hardware.cuda_graphs: got 'yes'"),
    (["hardware=cpu", "hardware.cuda_graphs=true"], "hardware.cuda_graphs: got true on device cpu"),
])
def test_bad_option_fails_early(tmp_path, overrides, expected):
    assert_fails_early(tmp_path, overrides, expected, "allowed: auto")


def test_buckets():
    assert [bucket_rows(n) for n in (1, 2, 3, 5, 8, 9, 16, 17, 32)] == [1, 2, 4, 8, 8, 16, 16, 24, 32]
    assert [bucket_length(t) for t in (1, 8, 9, 64, 65)] == [8, 8, 16, 64, 72]


def _left_padded(lengths, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(2, vocab, (n,), generator=g)
        mask[i, width - n:] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_bucketed_batch_gives_the_batch_logits(arch):
    """What a graph computes: the batch right-aligned in larger static buffers (more left
    padding, extra rows holding an earlier batch's rows). The real rows' logits are those of
    the batch alone (fp32 tolerance: attention sums over more, masked, keys)."""
    model = tiny_model(arch)
    with torch.no_grad():
        first = _left_padded([9, 4, 11, 7, 2, 11, 3], seed=1)
        second = _left_padded([5, 3, 6, 1, 6], seed=2)
        rows, length = bucket_rows(7), bucket_length(11)
        static = _Captured(None, torch.zeros(rows, length, dtype=torch.long),
                           torch.ones(rows, length, dtype=torch.long), None)
        for ids, mask in (first, second):   # the second leaves stale rows and more padding
            static.load(ids, mask)
            assert static.attention_mask[:len(ids), :length - ids.shape[1]].sum() == 0
            for keep in (1, 3):
                want = forward_logits(model, ids, mask, keep)
                got = forward_logits(model, static.input_ids, static.attention_mask, keep)
                torch.testing.assert_close(got[:len(ids)], want, rtol=1e-5, atol=1e-5)


def test_capture_state_follows_the_active_perturbations():
    """() with nothing active; a key per engine that reads its (seed, scale) from device
    memory (Triton backend); None while one with host-side values is active."""
    pytest.importorskip("triton")
    params = [torch.nn.Parameter(torch.randn(64, 16)), torch.nn.Parameter(torch.randn(16))]
    assert capture_state() == ()
    triton_engine = PerturbationEngine(params, backend="triton")
    torch_engine = PerturbationEngine(params, backend="torch")
    in_place = PerturbationEngine(params, exact=False)
    triton_engine.perturb(1, 1e-3)
    assert capture_state() == (("engine", triton_engine._serial),)
    triton_engine.move(1, 1e-3, -1e-3)
    assert capture_state() == (("engine", triton_engine._serial),)
    triton_engine.restore(1, -1e-3)
    assert capture_state() == ()
    torch_engine.perturb(2, 1e-3)
    assert capture_state() is None
    torch_engine.restore(2, 1e-3)
    in_place.perturb(3, 1e-3)        # the weights themselves: plain reads
    assert capture_state() == ()
    in_place.restore(3, 1e-3)
    exact = ExactDirections(params, torch_engine)
    exact.perturb(4, 1e-3)
    assert capture_state() is None
    exact.restore(4, 1e-3)
    assert capture_state() == ()


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_device_scalar_engine_moves_like_the_reference(dist):
    """Exact mode on the Triton backend (device scalars, kept cache buffers; interpreted on a
    CPU): perturb, move and restore show the forward what the torch reference shows it."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                                torch.nn.Linear(32, 4)).to(torch.bfloat16)
    twin = copy.deepcopy(model)
    x = torch.randn(3, 16).to(torch.bfloat16)
    a = PerturbationEngine(list(model.parameters()), dist=dist, backend="triton")
    b = PerturbationEngine(list(twin.parameters()), dist=dist, backend="torch")
    assert a._device is not None and b._device is None
    outs = []
    with torch.no_grad():
        for seed, scale, new in ((5, 1e-2, -1e-2), (6, 3e-2, 2e-2)):
            for e in (a, b):
                e.perturb(seed, scale)
            outs.append((model(x), twin(x)))
            for e in (a, b):
                e.move(seed, scale, new)
            outs.append((model(x), twin(x)))
            for e in (a, b):
                e.restore(seed, new)
    for got, want in outs:
        if dist == "rademacher":
            assert torch.equal(got, want)
        else:  # the interpreter's sin/cos vs libm: a 16-bit rounding may flip
            torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    assert not torch.equal(outs[0][0], outs[1][0])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
