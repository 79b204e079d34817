"""ZO-AdaMU (Jiang et al., AAAI 2024, arXiv 2312.15184): the momentum moves into the perturbation.

Sources read: the paper's update equations (the method section's perturbation / estimate /
second-moment / update equations, quoted below as (P1)-(P6) in the order the paper gives
them; the paper's own equation numbers could not be checked against its text here) and the
authors' released trainer (MathIsAll/ZO-AdaMU, `zo_perturb_parameters`, `zo_update`,
`_ema_weight`), which fixes the schedule's shape. The paper gives, at step t,

    (P1) z'_t  ~ N(0, sqrt(alpha_t))                          the fresh, zero-centred part
    (P2) z''_t ~ N(m_{t-1}, sqrt(1 - alpha_t))                the part centred on the momentum
    (P3) m_t   = beta1_t z'_t + (1 - beta1_t) z''_t           the perturbation ("simulated momentum")
    (P4) g_t   = (f(theta + eps m_t) - f(theta - eps m_t)) / (2 eps) * m_t
    (P5) v_t   = beta2_t z'_t^2 + (1 - beta2_t) z''_t^2       (element-wise)
    (P6) theta <- theta - lr * g_t / sqrt(v_t^2 + sigma)

with alpha ("uncertainty"), beta1, beta2 annealed in three phases. What is ambiguous, and the
reading taken (each choice a config key, default first):

* `gaussian_param: std | variance` -- is the second argument of N(., sqrt(alpha)) a standard
  deviation or a variance? `std` (the authors' code: `torch.normal(..., std=sqrt(alpha))`):
  z' = sqrt(alpha) xi', z'' = m_{t-1} + sqrt(1 - alpha) xi'', so Var z' + Var(z'' - m) = 1 and
  alpha = beta1 = 1 is MeZO's N(0, I). `variance`: z' = alpha^(1/4) xi', z'' = m + (1 - alpha)^(1/4) xi''.
* `denominator: sqrt_v | v` -- (P6) as printed divides by sqrt(v^2 + sigma) ~ |v|, the authors'
  code by sqrt(v + sigma) (Adam's root of the second moment). `sqrt_v` (the code): g m / sqrt(v +
  sigma); then |m| / sqrt(v) <= 1 when beta1 = beta2 (Jensen), so a step is at most lr |g| per
  coordinate. `v`: g m / sqrt(v^2 + sigma), as printed.
* Indices. (P2)-(P5) are read with one index per step: the perturbation probed at step t is the
  m_t the update uses, and v_t is built from the same draws (z'_t, z''_t) as m_t. The momentum
  carried to the next step is m_t itself (the authors' code stores sign(g) m_t; the estimate
  and the update are invariant under m -> -m, since z' is symmetric, so the two are the same
  optimiser in distribution).
* v is not accumulated over steps: (P5) has no v_{t-1} term, nor does the code.
* The schedule. Each of c in (alpha, beta1, beta2) is 1 for t < T1 (MeZO-like exploration),
  then follows a half cosine from 1 towards its target `<c>_target`,
  c_t = target + (1 - target) * (1 + cos(pi * (min(t, T2) - T1) / (T3 - T1))) / 2,
  frozen from T2 on: T1, T2 and T3 are the three time constants of the authors' `_ema_weight`
  (`warmup_1st_steps` = 1024, `warmup_2nd_steps` = 0.8 max_steps, and the cosine's length, which
  starts at max_steps). A T given as a float in [0, 1] is a fraction of `solver.steps`, an integer
  a step count; T1 <= T2 <= T3 is required. With the defaults (0.05, 0.8, 1.0; targets 0) the
  coefficients stop near 0.1, as the authors' do near 0.01-0.13.

State: m, one float32 tensor per trainable parameter (+4 bytes per parameter; v and the
perturbation are recomputed, never stored). The directions are generated on the fly: each read
of a parameter while a probe is active regenerates xi', xi'' from the step's two seeds and
forms m_t from the stored m_{t-1} (`AdaMUDirections`, through `ExactDirections`, so restores are
bit-exact). A step records (two seeds, projected gradient, lr, alpha, beta1, beta2); `replay`
redoes the update and advances m, so replaying the records in order rebuilds m and the
weights bit for bit. `subzero_adamu` (zoexp/solvers/subzero_adamu.py) draws xi', xi'' from
SubZero's low-rank subspace instead of the full space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zoexp.perturb import ExactDirections, PerturbationEngine
from zoexp.solvers.base import StepResult, check
from zoexp.solvers.zo import ZOSolver

GAUSSIAN_PARAMS = ("std", "variance")
DENOMINATORS = ("sqrt_v", "v")


def _finite(name: str, value, low: float, high: float, allowed: str) -> float:
    check(name, isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and low <= value <= high, value, allowed)
    return float(value)


def _time(name: str, value, steps: int) -> int:
    """A schedule boundary: an int is a step count, a float in [0, 1] a fraction of `steps`."""
    if isinstance(value, int) and not isinstance(value, bool):
        check(name, value >= 0, value, "an integer step >= 0 or a fraction of solver.steps in [0.0, 1.0]")
        return value
    check(name, isinstance(value, float) and 0.0 <= value <= 1.0, value,
          "an integer step >= 0 or a fraction of solver.steps in [0.0, 1.0]")
    return round(value * steps)


@dataclass(frozen=True)
class AnnealSchedule:
    """1 before T1, a half cosine from 1 towards the target from T1, frozen at T2 (T3: the
    cosine's end). See the module docstring."""

    t1: int
    t2: int
    t3: int

    def __call__(self, step: int, target: float) -> float:
        if step < self.t1:
            return 1.0
        x = (min(step, self.t2) - self.t1) / (self.t3 - self.t1) if self.t3 > self.t1 else 1.0
        return target + (1.0 - target) * 0.5 * (1.0 + math.cos(math.pi * x))


def mix(fresh: torch.Tensor, centred: torch.Tensor, weight: float) -> torch.Tensor:
    """weight * fresh + (1 - weight) * centred: m_t from (z', z''), and v_t from their squares.
    One function for the probes and the update, so both see the same rounding."""
    return fresh * weight + centred * (1.0 - weight)


class AdaMUDirections:
    """The perturbation m_t of the active step over a noise source (anything with
    `direction(seed, index)`: the engine's Gaussian, SubZero's low-rank Z), and the momentum m."""

    def __init__(self, params, noise, gaussian_param: str = "std") -> None:
        self.params, self.noise, self.gaussian_param = list(params), noise, gaussian_param
        self.momentum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.plan: tuple[int, int, float, float] | None = None  # (seed, seed2, alpha, beta1)

    def begin(self, seed: int, seed2: int, alpha: float, beta1: float) -> None:
        self.plan = (seed, seed2, alpha, beta1)

    def spreads(self, alpha: float) -> tuple[float, float]:
        """Standard deviations of the fresh and of the momentum-centred part."""
        if self.gaussian_param == "std":
            return math.sqrt(alpha), math.sqrt(1.0 - alpha)
        return alpha ** 0.25, (1.0 - alpha) ** 0.25

    def parts(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z', z'') of parameter `index` for the active step (float32)."""
        seed, seed2, alpha, _ = self.plan
        fresh, centred = self.spreads(alpha)
        z1 = self.noise.direction(seed, index).mul_(fresh)
        z2 = self.noise.direction(seed2, index).mul_(centred).add_(self.momentum[index])
        return z1, z2

    def direction(self, seed: int, index: int) -> torch.Tensor:
        """m_t of parameter `index` (what the probes perturb along)."""
        if self.plan is None or seed != self.plan[0]:
            raise RuntimeError(f"direction({seed}) is not the active ZO-AdaMU step {self.plan}")
        return mix(*self.parts(index), self.plan[3])

    def update(self, seed: int, coef: float, decay: float = 0.0) -> None:
        raise RuntimeError("ZO-AdaMU updates through the solver's replay, not coef * z")


class ZOAdaMU(ZOSolver):
    """See the module docstring. One perturbation per step (n_perts = 1), 2 forwards."""

    def __init__(self, T1: int | float = 0.05, T2: int | float = 0.8, T3: int | float = 1.0,
                 alpha_target: float = 0.0, beta1_target: float = 0.0, beta2_target: float = 0.0,
                 sigma: float = 1e-8, gaussian_param: str = "std", denominator: str = "sqrt_v",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        check("solver.n_perts", self.n_perts == 1, self.n_perts,
              "1 (ZO-AdaMU probes one momentum perturbation a step)")
        check("solver.lr", math.isfinite(self.lr), self.lr, "a finite number >= 0")
        check("solver.eps", math.isfinite(self.eps), self.eps, "a finite number > 0")
        times = [_time(f"solver.{n}", v, self.steps) for n, v in (("T1", T1), ("T2", T2), ("T3", T3))]
        check("solver.T2", times[0] <= times[1] <= times[2], f"T1={T1}, T2={T2}, T3={T3}",
              f"T1 <= T2 <= T3 (as steps of solver.steps={self.steps}: {times})")
        self.schedule = AnnealSchedule(*times)
        self.targets = {name: _finite(f"solver.{name}_target", value, 0.0, 1.0, "a number in [0, 1]")
                        for name, value in (("alpha", alpha_target), ("beta1", beta1_target),
                                            ("beta2", beta2_target))}
        self.sigma = _finite("solver.sigma", sigma, 0.0, math.inf, "a finite number >= 0")
        check("solver.gaussian_param", gaussian_param in GAUSSIAN_PARAMS, gaussian_param, str(list(GAUSSIAN_PARAMS)))
        check("solver.denominator", denominator in DENOMINATORS, denominator, str(list(DENOMINATORS)))
        self.gaussian_param, self.denominator = gaussian_param, denominator
        self.adamu: AdaMUDirections | None = None

    # ---- directions ------------------------------------------------------------------------
    def make_noise(self):
        """Where xi', xi'' come from: the engine's seeded Gaussian (full space)."""
        return PerturbationEngine(self.params, dist="gaussian")

    def make_directions(self) -> ExactDirections:
        self.adamu = AdaMUDirections(self.params, self.make_noise(), self.gaussian_param)
        return ExactDirections(self.params, self.adamu)

    def coefficients(self, step: int) -> dict[str, float]:
        return {name: self.schedule(step, target) for name, target in self.targets.items()}

    def prepare(self, record: dict) -> None:
        """Make the record's step the active one (subzero_adamu also selects its subspace)."""
        self.adamu.begin(record["seeds"][0], record["seeds"][1], record["alpha"], record["beta1"])

    # ---- step --------------------------------------------------------------------------------
    def step(self, batch, step: int) -> StepResult:
        seeds = [self.direction_seed(step, 0), self.derive(step, 0, 1)]
        plan = {"seeds": seeds, **self.coefficients(step), **self.record_extra(step)}
        self.prepare(plan)
        _, _, plus, minus = self.probe_pairs(batch, step)
        grad = (plus[0] - minus[0]) / (2 * self.eps)
        record = {**plan, "proj_grad": grad, "lr": self.lr_at(step)}
        self.ensure_finite(step, (plus[0] + minus[0]) / 2, [grad], record)  # before it is applied
        self.replay(record)
        return StepResult(loss=(plus[0] + minus[0]) / 2, record=record,
                          metrics={"proj_grad": grad, "lr": record["lr"], "alpha": plan["alpha"],
                                   "beta1": plan["beta1"], "beta2": plan["beta2"]})

    def record_extra(self, step: int) -> dict:
        """What else a record needs to regenerate the step's noise (subzero_adamu: the subspace)."""
        return {}

    @torch.no_grad()
    def replay(self, record: dict) -> None:
        self.prepare(record)
        beta1, beta2, grad, lr = record["beta1"], record["beta2"], record["proj_grad"], record["lr"]
        for i, p in enumerate(self.params):
            z1, z2 = self.adamu.parts(i)
            m = mix(z1, z2, beta1)
            v = mix(z1.square_(), z2.square_(), beta2)
            denom = (v if self.denominator == "sqrt_v" else v.square_()).add_(self.sigma).sqrt_()
            if self.weight_decay:
                p.mul_(1.0 - lr * self.weight_decay)
            p.add_((m * grad / denom).to(p.dtype), alpha=-lr)
            self.adamu.momentum[i] = m

    def state_dict(self) -> dict:
        return {"momentum": [m.cpu() for m in self.adamu.momentum]}

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip(self.adamu.momentum, state["momentum"]):
            mine.copy_(saved)
