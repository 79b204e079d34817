"""Training batches as a pure function of (seed, step), grouped by length to cut padding.

Every batch is padded to its longest example, so a batch that mixes a 5-token and a 60-token
prompt computes mostly padding. Grouping examples of similar length into the same batch
removes most of that waste. The order still has to look random to the optimiser and be
reproducible without sampler state (a resumed run asks for step s and must get the same
indices), so each epoch's order is derived from (seed, epoch) alone:

1. shuffle all indices;
2. cut the shuffled list into mega-chunks of `chunk_batches` batches and sort each chunk by
   length, so neighbours in a chunk have similar lengths while chunks stay random samples;
3. split into batches and shuffle the batch order, so long and short batches alternate.

Each epoch covers every index exactly once; when the data size is not a multiple of the
batch size, one batch per epoch is smaller.
"""

from __future__ import annotations

import math
import random
from typing import Sequence


def padding_ratio(lengths: Sequence[int]) -> float:
    """Computed tokens / real tokens for one batch padded to its longest example."""
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be positive, got {list(lengths)}")
    return len(lengths) * max(lengths) / sum(lengths)


def length_sorted(lengths: Sequence[int]) -> list[int]:
    """Evaluation order: longest first, so batches of neighbours barely pad (and an
    out-of-memory batch shows up at the start, not after minutes)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


class LengthGroupedBatches:
    """Deterministic batch sampler: `batch(step)` -> the example indices of that step."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group: bool = True,
                 chunk_batches: int = 50) -> None:
        if not lengths:
            raise ValueError("no examples to batch")
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError(f"batch_size and chunk_batches must be >= 1, got {batch_size}, {chunk_batches}")
        self.lengths = list(lengths)
        self.batch_size, self.seed, self.group, self.chunk_batches = batch_size, seed, group, chunk_batches
        self.per_epoch = math.ceil(len(self.lengths) / batch_size)
        self._cached: tuple[int, list[list[int]]] | None = None  # (epoch, its batches)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of one epoch, in order; a pure function of (seed, epoch)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = random.Random(f"{self.seed}:{epoch}")  # str seeds hash with SHA-512: stable across runs
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.batch_size
        if self.group:
            chunk = size * self.chunk_batches
            order = [i for start in range(0, len(order), chunk)
                     for i in sorted(order[start : start + chunk], key=self.lengths.__getitem__, reverse=True)]
        batches = [order[start : start + size] for start in range(0, len(order), size)]
        if self.group:
            rng.shuffle(batches)
        self._cached = (epoch, batches)
        return batches

    def batch(self, step: int) -> list[int]:
        """Indices of the examples for training step `step` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, k = divmod(step, self.per_epoch)
        return self.epoch_batches(epoch)[k]
