"""How a step's probes are evaluated: the one seam between the ZO solvers and the ways of
running their forward passes.

A seeded ZO solver asks one question per step: *given a batch and a list of perturbations,
what are the losses?* A perturbation is a `Probe` -- theta + scale * z(seed), or theta itself
when seed is None (1.5-SPSA's f0, a one-sided difference's base). The solver then turns the
loss table into coefficients and updates; it never knows how the losses were computed.

How they are computed is a *probe strategy*, chosen from the config and built once the
parameters and the objective exist:

* `SequentialProbes` (here): one forward per probe, one after another, through the
  directions' verbs (perturb / move / restore), with the sweeps chained so n central
  differences cost 2 n + 1 sweeps.
* Other strategies (one batched forward whose row groups see different perturbations,
  layer-major probes over blocks streamed from host memory) implement the same `losses` and
  live in their own modules beside this one; they register themselves in `STRATEGIES`. A new
  solver gets every strategy for free, and a new strategy serves every solver. The loop never
  learns about any of them.
* CUDA graphs are not a strategy but a property of the scorer's forward (`zoexp.graphs`),
  so every strategy's single-group forwards replay captured graphs. A strategy that changes
  what a forward computes while it runs (per-group weights, streamed blocks) registers that
  state with `zoexp.perturb.activated` (its `capture_key()`: a key if the state lives in
  device memory a replay reads, None to run those forwards eagerly); grouped forwards run
  eagerly until then.

Every strategy returns the losses in the order of the probes and leaves the parameters at
theta (bit-exactly where the directions restore exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence


@dataclass(frozen=True)
class Probe:
    """theta + scale * z(seed); `seed=None` is theta itself."""

    seed: int | None = None
    scale: float = 0.0


def central_pairs(seeds: Sequence[int], eps: float) -> list[Probe]:
    """[+eps z_1, -eps z_1, +eps z_2, -eps z_2, ...]: the probes of n central differences."""
    return [Probe(s, sign * eps) for s in seeds for sign in (1.0, -1.0)]


class ProbeStrategy(Protocol):
    def losses(self, batch, probes: Sequence[Probe]) -> list[float]:
        """The objective's loss on `batch` under each probe, in order; theta restored after."""
        ...


def step_to(directions, active: Probe | None, probe: Probe) -> Probe | None:
    """Move the parameters from the perturbation `active` holds (None: theta) to `probe`;
    returns the perturbation they hold after. Consecutive probes of one seed are a single
    `move`; a new seed's perturbation is fused into the previous one's restore
    (`restore_update_perturb` with a zero update). Every strategy walks its probes with this,
    so the weights see the same sweeps, in the same order, whatever the strategy."""
    if probe.seed is None:
        if active is not None:
            directions.restore(active.seed, active.scale)
        return None
    if active is None:
        directions.perturb(probe.seed, probe.scale)
    elif active.seed == probe.seed:
        directions.move(probe.seed, active.scale, probe.scale)
    else:
        directions.restore_update_perturb(active.seed, active.scale, 0.0, next_seed=probe.seed,
                                          next_scale=probe.scale)
    return probe


def queued_loss(objective, batch):
    """The objective's loss on `batch` as a tensor still being computed where the objective
    offers one (`group_loss_tensor`), else as a float. Reading the losses only once all probes
    are queued keeps the GPU busy while the host prepares the next probe."""
    pending = getattr(objective, "group_loss_tensor", None)
    return pending(batch, 1)[0] if pending is not None else objective.loss(batch)


class SequentialProbes:
    """One forward per probe, in order, walked with `step_to`: a list of n central pairs
    costs 2 n + 1 sweeps in place and writes the same weights bit for bit as perturb / move /
    restore. The losses are read back once all probes are queued (`queued_loss`)."""

    name = "sequential"

    def __init__(self, directions, objective) -> None:
        self.directions, self.objective = directions, objective

    def losses(self, batch, probes: Sequence[Probe]) -> list[float]:
        active: Probe | None = None  # the perturbation the parameters hold now
        out = []
        try:
            for probe in probes:
                active = step_to(self.directions, active, probe)
                out.append(queued_loss(self.objective, batch))
        finally:
            # Also when a forward raises (out of memory, an interrupt): theta + eps z must not
            # stay in the weights, where a checkpoint or an evaluation after it would read them.
            step_to(self.directions, active, Probe())
        return [float(loss) for loss in out]


# name -> factory(directions, objective, **options). Strategies in other modules add themselves.
STRATEGIES: dict[str, Callable[..., ProbeStrategy]] = {"sequential": SequentialProbes}


def build_probe_strategy(name: str, directions, objective, **options) -> ProbeStrategy:
    return STRATEGIES[name](directions, objective, **options)
