"""The Solver interface and the pieces every solver shares (budget, lr schedule, seeds).

A solver is built from its YAML *before* the model loads, so its constructor validates the
hyperparameters (bad input fails fast); `setup` then hands it the trainable parameters and
the objective. `step` runs one optimisation step on a batch and returns a `StepResult`,
whose `record` is what `replay` needs to redo the update without the data (the seed
trajectory of a ZO run).

Divergence: every solver calls `ensure_finite` after computing a step's update and *before*
applying it; a non-finite loss, projected gradient or record value raises `Diverged`, so a
NaN never reaches the weights or the trajectory, and the loop applies the run's
`on_divergence` policy (stop, or skip the step). `ZOSolver.finish` does this for every seeded
ZO solver; a solver that applies its own update (MeZO, the first-order ones) calls it itself.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

from zoexp.distributed import Ranks
from zoexp.errors import ConfigError, Diverged
from zoexp.placement import Placement

LR_SCHEDULES = ("constant", "linear")
SEED_BITS = (31, 64)  # 64: the whole Philox key; 31: trajectories of format version 1
# How a seeded ZO solver differences its probes: central (f(theta + eps z) - f(theta - eps z)) /
# (2 eps), or one-sided (f(theta + eps z) - f(theta)) / eps with f(theta) shared by the directions.
PERTURBATIONS = ("two_side", "one_side")


@dataclass
class StepResult:
    loss: float                                 # training loss on the batch (unperturbed estimate)
    metrics: dict = field(default_factory=dict)  # extra scalars to log (projected gradient, ...)
    record: dict = field(default_factory=dict)   # JSON-able: enough for `replay` to redo the update


def check(field_name: str, ok: bool, got, allowed: str) -> None:
    """Raise the one-line ConfigError when a hyperparameter is out of range."""
    if not ok:
        raise ConfigError(field_name, f"got {got!r}; allowed: {allowed}")


def is_number(value) -> bool:
    """A finite real number (a bool, nan or inf is not): the type every numeric knob needs."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_perturbation(perturbation: str, two_side_only: str | None = None) -> str:
    """Validate `solver.perturbation`; `two_side_only` names why a solver needs f(theta - eps z)."""
    check("solver.perturbation", perturbation in PERTURBATIONS, perturbation, str(list(PERTURBATIONS)))
    if two_side_only is not None:
        check("solver.perturbation", perturbation == "two_side", perturbation,
              f"two_side ({two_side_only})")
    return perturbation


def engine_options(dist: str, exact: bool, stochastic_rounding: bool) -> dict:
    """Validated PerturbationEngine options shared by the seeded-direction ZO solvers."""
    from zoexp.perturb import DISTS

    check("solver.dist", dist in DISTS, dist, str(list(DISTS)))
    check("solver.exact", isinstance(exact, bool), exact, "true or false")
    check("solver.stochastic_rounding", isinstance(stochastic_rounding, bool), stochastic_rounding,
          "true or false")
    return {"dist": dist, "exact": exact, "stochastic_rounding": stochastic_rounding}


def derive_seed(base: int, *keys: int, bits: int = 64) -> int:
    """A seed that is a pure function of (base seed, step, direction...): resumable, replayable.

    64 bits fill the Philox key (`kernels.philox`), so a 20k-step x 40-direction run draws
    800k seeds with a ~2e-8 chance of any repeat (31 bits repeat 136 of them). `bits=31`
    is the derivation of trajectory format version 1, kept so old runs replay."""
    text = ":".join(map(str, (base, *keys))).encode()
    if bits == 31:
        return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little") >> 1
    if bits != 64:
        raise ValueError(f"seed bits: got {bits}; allowed: {SEED_BITS}")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")



class Solver:
    """Base class. `trains = False` for evaluation-only solvers (zero-shot, ICL)."""

    trains = True
    seed_bits = 64  # direction seeds: 64 bits, or 31 to continue / replay a format-1 trajectory
    # Where this solver can train (zoexp.placement): "device" (the model in GPU memory),
    # "offload" (blocks streamed from host memory), "fsdp" (sharded). The last two need an
    # update made only of seeded directions (`directions.update(seed, coef)`), so a block can
    # take it when it is next uploaded, or a shard for its own rows.
    placements: tuple[str, ...] = ("device",)
    placement_note = ""  # why the others are not supported, for the refusal message
    # Whether the forwards of a training step can be replayed from CUDA graphs (zoexp.graphs):
    # not under backprop, nor where a perturbation is computed on the host per read.
    graphable_steps = True

    def __init__(self, steps: int = 0, batch_size: int = 16, eval_every: int = 0,
                 lr: float = 0.0, lr_schedule: str = "constant", weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        check("solver.steps", isinstance(steps, int) and steps >= (1 if self.trains else 0), steps,
              "an integer >= 1" if self.trains else "an integer >= 0")
        check("solver.batch_size", isinstance(batch_size, int) and batch_size >= 1, batch_size, "an integer >= 1")
        check("solver.eval_every", isinstance(eval_every, int) and eval_every >= 0, eval_every,
              "an integer >= 0 (0: evaluate at the end only)")
        check("solver.lr", is_number(lr) and lr >= 0, lr, "a number >= 0")
        check("solver.lr_schedule", lr_schedule in LR_SCHEDULES, lr_schedule, str(list(LR_SCHEDULES)))
        check("solver.weight_decay", is_number(weight_decay) and weight_decay >= 0, weight_decay,
              "a number >= 0")
        check("solver.seed", isinstance(seed, int) and not isinstance(seed, bool), seed, "an integer")
        self.steps, self.batch_size, self.eval_every = steps, batch_size, eval_every
        self.lr, self.lr_schedule, self.weight_decay = float(lr), lr_schedule, float(weight_decay)
        self.seed = seed
        self.params: list = []
        self.objective = None
        self.ranks = Ranks()
        self.placement = Placement(None)

    # ---- lifecycle -----------------------------------------------------------------------
    def distribute(self, ranks: Ranks) -> None:
        """Join a run of `ranks.world` processes (`zoexp.distributed`), before the model loads.
        Evaluation-only solvers just evaluate on every rank; a training solver must say how
        it splits a step (the seeded ZO solvers deal out their directions), else it refuses --
        unless the ranks run in lockstep (a sharded model), where each runs the whole step."""
        if ranks.world > 1 and self.trains and not ranks.lockstep:
            raise ConfigError("processes", f"got {ranks.world}; {type(self).__name__} does not split "
                              "its steps over processes; allowed: 1 (several: a seeded ZO solver -- "
                              "spsa, spsa15, subzero, zo_adam, zo_sgd_momentum, zo_sign, hizoo, lozo, "
                              "lozo_m, sparse_mezo -- with solver.n_perts >= processes)")
        self.ranks = ranks

    def place(self, placement: Placement) -> None:
        """Where the weights will live (zoexp.placement), before the model loads; the
        placement has checked that this solver can train there (`placements`)."""
        self.placement = placement

    def setup(self, params: Sequence, objective, train_examples: Sequence = ()) -> None:
        """Receive the trainable parameters, the objective and the training examples
        (after the model loads). Subclasses that override call super().setup first."""
        self.params = list(params)
        self.objective = objective
        self.train_examples = list(train_examples)

    def eval_examples(self, examples: list) -> list:
        """Examples as this method presents them at evaluation (ICL adds demonstrations)."""
        return examples

    def step(self, batch, step: int) -> StepResult:
        raise NotImplementedError

    def settle(self) -> None:
        """Leave the parameters at theta. A solver may end a step with the next step's
        perturbation already applied (fused into its last sweep); the loop calls this before
        anything else reads the parameters: evaluation, a checkpoint, the end of training."""

    def replay(self, record: dict) -> None:
        """Redo the update of a recorded step on the current parameters (no data needed)."""
        raise NotImplementedError(f"{type(self).__name__} does not support replay")

    def state_dict(self) -> dict:
        """Solver state beyond the parameters (moments, counters) for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def set_seed_bits(self, bits: int) -> None:
        """Derive direction seeds as trajectory format `bits` did (64, or 31 for version 1)."""
        if bits not in SEED_BITS:
            raise ValueError(f"seed bits: got {bits}; allowed: {SEED_BITS}")
        self.seed_bits = bits

    def ensure_finite(self, step: int, loss: float, grads: Sequence[float] = (),
                      record: dict | None = None) -> None:
        """Raise Diverged unless the step's loss, projected gradients and record numbers are
        all finite. Call it after computing an update and before applying it."""
        if not math.isfinite(float(loss)):
            raise Diverged(step, "the training loss", float(loss))
        for g in grads:
            if not math.isfinite(float(g)):
                raise Diverged(step, "the projected gradient", float(g))
        for key, value in _numbers(record or {}):
            if not math.isfinite(value):
                raise Diverged(step, f"the update's {key}", value)

    # ---- shared helpers ------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "linear":
            return self.lr * max(0.0, 1.0 - step / max(self.steps, 1))
        return self.lr

    def derive(self, *keys: int) -> int:
        return derive_seed(self.seed, *keys, bits=self.seed_bits)

    def direction_seed(self, step: int, k: int = 0) -> int:
        return self.derive(step, k)


def _numbers(tree, prefix: str = ""):
    """(key, float) for every float in a JSON-like record (ints -- seeds, steps -- are exact)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _numbers(value, prefix)
    elif isinstance(tree, float):
        yield prefix, tree
