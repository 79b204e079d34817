"""Tuned comparisons: what an Optuna study (`-m hydra/sweeper=optuna`) searches and maximises.

ZO methods are sensitive to lr and eps, so a fair comparison tunes both per solver. The
search space is derived from the solver's own YAML: every key of `TUNED` that the chosen
solver has, with a positive default v, is searched log-uniformly over
[v / 10**DECADES, v * 10**DECADES] (one decade either side: mezo's lr 3e-3 -> [3e-4, 3e-2]).
Solvers without such a key (zeroshot, icl; fo_* have no eps) simply search less. A range
given on the command line wins, e.g. `solver.lr='tag(log, interval(1e-4, 1e-1))'`, and so
does a fixed value (`solver.eps=1e-2` keeps eps out of the search).

`register_optuna_sweeper` makes `hydra/sweeper=optuna` this project's study (below);
`search_space` is the sweeper's `custom_search_space` hook;
`objective_value` turns a run's summary into the number the study maximises: the best dev
value of the task metric (accuracy, F1, ROUGE-L). A diverged run -- a non-finite value, or a
summary that says `diverged` -- scores -inf, so the study records it as the worst trial and goes
on; a run that raises is recorded as a failed trial (the sweeper's max_failure_rate is 1.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig

TUNED = ("lr", "eps")
DECADES = 1.0


def ranges(solver: DictConfig | dict) -> dict[str, tuple[float, float]]:
    """{'solver.<key>': (low, high)} for the tuned keys this solver has."""
    out = {}
    for key in TUNED:
        value = solver.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            out[f"solver.{key}"] = (float(value) / 10**DECADES, float(value) * 10**DECADES)
    return out


def search_space(cfg: DictConfig, trial: Any) -> None:
    """Optuna sweeper hook: suggest each tuned key not already set or searched on the command line."""
    for name, (low, high) in ranges(cfg.solver).items():
        if name not in trial.params and name not in trial.user_attrs:
            trial.suggest_float(name, low, high, log=True)


def objective_value(summary: dict) -> float:
    """The value a study maximises: best dev metric, or -inf for a diverged run."""
    value = summary.get(f"best_dev_{summary.get('metric')}")
    if summary.get("diverged") or not isinstance(value, (int, float)) or not math.isfinite(value):
        return float("-inf")
    return float(value)


def register_optuna_sweeper() -> bool:
    """Make `hydra/sweeper=optuna` this project's study: maximise the best dev metric, search
    each solver's lr and eps (`search_space`), never stop for failed trials, sample with the
    run's seed. Settings (all overridable as hydra.sweeper.<key>):

        direction: maximize          n_trials: 20     n_jobs: 1 (trials launched together:
        max_failure_rate: 1.0        sampler: tpe, seed ${hardware.seed}   a SLURM array of n_jobs)
        study_name: null             storage: null (sqlite:///optuna.db + a study_name keep a study)
        custom_search_space: zoexp.tuning.search_space

    Why in Python and not conf/hydra/sweeper/optuna.yaml: the plugin already stores a schema
    named `optuna` in that group, and Hydra 1.3 refuses a YAML that shadows a schema with a
    defaults list. Hydra's plugin scan re-executes the plugin's config module (which stores the
    plugin's own node), so the scan is run first -- it happens once per process -- and this
    node replaces the plugin's. Returns False when the plugin is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        return False
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # the one plugin scan of this process, before our node is stored
    # imported after the scan: the scan re-executes the module, re-creating its classes
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf, TPESamplerConfig

    @dataclass
    class ZOExpOptunaSweeperConf(OptunaSweeperConf):
        direction: Any = "maximize"
        n_trials: int = 20
        n_jobs: int = 1
        max_failure_rate: float = 1.0
        custom_search_space: Optional[str] = "zoexp.tuning.search_space"
        sampler: Any = field(default_factory=lambda: TPESamplerConfig(seed="${hardware.seed}"))

    ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=ZOExpOptunaSweeperConf,
                                 provider="zoexp")
    return True
