"""`-m hydra/sweeper=optuna`: each solver's lr / eps search space, the value a study maximises,
a study that survives failed and diverged trials, the SLURM launcher, and a real offline study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from tests.conftest import ROOT, run_main
from zoexp.tuning import objective_value, ranges, register_optuna_sweeper, search_space

CONF = ROOT / "conf"
SOLVERS = sorted(p.stem for p in (CONF / "solver").glob("*.yaml"))


def compose_cfg(*overrides: str):
    assert register_optuna_sweeper()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/sweeper=optuna", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


@pytest.mark.parametrize("solver", SOLVERS)
def test_search_space_is_a_decade_either_side_of_the_solvers_defaults(solver):
    cfg = compose_cfg(f"solver={solver}")
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    search_space(cfg, trial)
    expected = {f"solver.{k}": (cfg.solver[k] / 10, cfg.solver[k] * 10)
                for k in ("lr", "eps") if isinstance(cfg.solver.get(k), float) and cfg.solver[k] > 0}
    assert set(trial.params) == set(expected)
    for name, (low, high) in expected.items():
        dist = trial.distributions[name]
        assert isinstance(dist, optuna.distributions.LogUniformDistribution)
        assert (dist.low, dist.high) == pytest.approx((low, high)) and low <= trial.params[name] <= high
    if solver == "mezo":
        assert expected["solver.lr"] == pytest.approx((3e-4, 3e-2))
        assert expected["solver.eps"] == pytest.approx((1e-3, 1e-1))
    if solver in ("zeroshot", "icl"):
        assert not expected


def test_a_range_or_value_from_the_command_line_wins():
    cfg = compose_cfg("solver=mezo")
    trial = optuna.create_study().ask()
    trial.suggest_float("solver.lr", 1e-5, 1e-4, log=True)  # the user's own range
    trial.set_user_attr("solver.eps", 0.05)                  # a fixed value
    search_space(cfg, trial)
    assert set(trial.params) == {"solver.lr"} and trial.distributions["solver.lr"].high == 1e-4


def test_objective_value_is_the_best_dev_metric_and_minus_inf_when_diverged():
    assert objective_value({"metric": "accuracy", "best_dev_accuracy": 0.75}) == 0.75
    assert objective_value({"metric": "rougeL", "best_dev_rougeL": 0.3}) == 0.3
    for bad in (float("nan"), float("inf"), None, "nan"):
        assert objective_value({"metric": "accuracy", "best_dev_accuracy": bad}) == -math.inf
    assert objective_value({"metric": "f1", "best_dev_f1": 0.9, "diverged": True}) == -math.inf


@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_the_optuna_sweeper_builds_for_each_launcher(tmp_path, launcher):
    cfg = compose_cfg("solver=zo_adamu", f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path}")
    sweeper = hydra.utils.instantiate(cfg.hydra.sweeper)
    impl = sweeper.sweeper
    assert impl.direction == "maximize" and impl.max_failure_rate == 1.0
    assert impl.custom_search_space_extender.func is search_space
    assert cfg.hydra.sweeper.sampler.seed == cfg.hardware.seed
    assert "submitit" in cfg.hydra.launcher._target_


class ScriptedLauncher:
    """Stands in for the launcher: 'runs' each trial by scoring its lr / eps with a known
    function, except that chosen trials fail (raise) or diverge (-inf)."""

    def __init__(self, fail_jobs=(), diverge_jobs=()) -> None:
        self.fail_jobs, self.diverge_jobs, self.seen = set(fail_jobs), set(diverge_jobs), []

    @staticmethod
    def score(params: dict) -> float:
        return -(math.log10(params["solver.lr"] / 3e-3) ** 2) - (math.log10(params["solver.eps"] / 1e-2) ** 2)

    def launch(self, job_overrides, initial_job_idx):
        out = []
        for n, overrides in enumerate(job_overrides, start=initial_job_idx):
            params = {k: float(v) for k, v in (o.split("=") for o in overrides)}
            self.seen.append(params)
            ret = JobReturn(overrides=list(overrides))
            if n in self.fail_jobs:
                ret.status, ret._return_value = JobStatus.FAILED, RuntimeError("a failed trial")
            else:
                ret.status = JobStatus.COMPLETED
                ret._return_value = -math.inf if n in self.diverge_jobs else self.score(params)
            out.append(ret)
        return out


def test_a_study_survives_failed_and_diverged_trials_and_reports_the_best(tmp_path):
    cfg = compose_cfg("solver=mezo", f"hydra.sweep.dir={tmp_path}", "hydra.sweeper.n_trials=12",
                      "hydra.sweeper.n_jobs=3")
    impl = hydra.utils.instantiate(cfg.hydra.sweeper).sweeper
    impl.config, impl.hydra_context, impl.job_idx = cfg, object(), 0
    impl.launcher = launcher = ScriptedLauncher(fail_jobs={1, 4}, diverge_jobs={2})
    impl.sweep(arguments=[])
    assert len(launcher.seen) == 12  # all trials ran, in batches of n_jobs
    for params in launcher.seen:
        assert set(params) == {"solver.lr", "solver.eps"}
        assert 3e-4 <= params["solver.lr"] <= 3e-2 and 1e-3 <= params["solver.eps"] <= 1e-1
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    scored = [(ScriptedLauncher.score(p), p) for n, p in enumerate(launcher.seen) if n not in {1, 2, 4}]
    best_value, best_params = max(scored, key=lambda x: x[0])
    assert result["best_value"] == pytest.approx(best_value)
    assert result["best_params"] == pytest.approx(best_params)


def test_a_real_study_offline_prints_the_best_lr_and_eps(tmp_path, sst2_dir):
    """The must-show command on the default model, with a tiny budget (3 trials of 2 steps)."""
    sweep = tmp_path / "study"
    proc = run_main("-m", "hydra/sweeper=optuna", "solver=mezo", "hydra.sweeper.n_trials=3",
                    "solver.steps=2", "solver.batch_size=2", "solver.eval_every=0", "task.num_train=8",
                    "task.num_dev=8", "task.num_eval=4", f"task.data_dir={sst2_dir}", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [line for line in (proc.stdout + proc.stderr).splitlines() if "Best parameters:" in line]
    assert printed and "solver.lr" in printed[0] and "solver.eps" in printed[0], proc.stderr[-2000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = {}
    for job in range(3):
        overrides = yaml.safe_load((sweep / str(job) / ".hydra" / "overrides.yaml").read_text())
        lr = float(next(o for o in overrides if o.startswith("solver.lr=")).split("=")[1])
        assert 3e-4 <= lr <= 3e-2
        values[job] = json.loads((sweep / str(job) / "summary.json").read_text())["best_dev_accuracy"]
    assert result["best_value"] == pytest.approx(max(values.values()))
    assert set(result["best_params"]) == {"solver.lr", "solver.eps"}
    assert OmegaConf.load(sweep / "0" / ".hydra" / "hydra.yaml").hydra.sweeper.direction == "maximize"
    assert Path(sweep / "summary.md").is_file()  # the project's sweep summary ran too
