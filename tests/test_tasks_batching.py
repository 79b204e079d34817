"""The length-grouping sampler: deterministic per (seed, step), full epochs, less padding."""

import random

import pytest

from zoexp.batching import LengthGroupedBatches, padding_ratio


def test_padding_ratio_closed_form():
    assert padding_ratio([2, 4]) == pytest.approx(8 / 6)
    assert padding_ratio([7, 7, 7]) == 1.0
    with pytest.raises(ValueError):
        padding_ratio([])


@pytest.mark.parametrize("group", [True, False])
def test_every_index_once_per_epoch(group):
    n, bs = 103, 16
    sampler = LengthGroupedBatches([1 + i % 37 for i in range(n)], bs, seed=5, group=group)
    assert sampler.per_epoch == 7
    for epoch in range(3):
        batches = [sampler.batch(epoch * 7 + k) for k in range(7)]
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert sorted(len(b) for b in batches) == [7] + [16] * 6


def test_batches_are_a_pure_function_of_seed_and_step():
    lengths = [random.Random(0).randint(1, 80) for _ in range(500)]
    a = LengthGroupedBatches(lengths, 16, seed=11)
    sequential = [a.batch(s) for s in range(100)]
    # A fresh sampler asked out of order (a resumed run) gives the same batches.
    b = LengthGroupedBatches(lengths, 16, seed=11)
    assert [b.batch(s) for s in reversed(range(100))][::-1] == sequential
    assert LengthGroupedBatches(lengths, 16, seed=12).batch(0) != sequential[0]
    assert sequential[0] != sequential[a.per_epoch]  # a new epoch is a new order


def _epoch_ratio(sampler: LengthGroupedBatches, lengths: list[int]) -> float:
    batches = [sampler.batch(s) for s in range(sampler.per_epoch)]
    computed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return computed / sum(lengths)


def test_grouping_cuts_padding():
    rng = random.Random(3)
    lengths = [rng.randint(5, 120) for _ in range(1600)]
    grouped = _epoch_ratio(LengthGroupedBatches(lengths, 16, seed=0, group=True), lengths)
    plain = _epoch_ratio(LengthGroupedBatches(lengths, 16, seed=0, group=False), lengths)
    assert plain > 1.5     # uniform lengths: a random batch's max is near the top of the range
    assert grouped < 1.05  # 800 examples per chunk: neighbours differ by a token or so


def test_grouped_batches_still_mix_lengths_across_steps():
    lengths = list(range(1, 801))
    sampler = LengthGroupedBatches(lengths, 16, seed=2)
    firsts = [max(lengths[i] for i in sampler.batch(s)) for s in range(sampler.per_epoch)]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_bad_arguments():
    with pytest.raises(ValueError):
        LengthGroupedBatches([], 4)
    with pytest.raises(ValueError):
        LengthGroupedBatches([1, 2], 0)
