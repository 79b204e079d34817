"""hydra/launcher=slurm|local: the request follows the hardware group into the sbatch script.

No cluster needed: the launcher builds its submitit executor as in a real sweep, and the
submission is captured instead of sent. submitit's SLURM executor refuses to be built where
`srun` is not on the PATH (a laptop, a CI runner without SLURM); these tests tell it srun is
there, since what they check -- the sbatch script text -- is written without any cluster.
The tests that need a real cluster are marked `slurm` (tests/test_resume.py, test_slurm_e2e.py).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import submitit
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
HARDWARE = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml"))


def launcher_cfg(tmp_path: Path, launcher: str, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", f"hydra.sweep.dir={tmp_path}",
                                           *overrides], return_hydra_config=True)
    return cfg


def captured_executor(cfg, monkeypatch) -> submitit.AutoExecutor:
    """Run the launcher's launch() up to the point where it would submit; return its executor."""
    seen = {}

    def fake_map_array(self, fn, *args):
        seen["executor"] = self
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun found"
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    assert launcher.launch([["solver.lr=0.001"]], initial_job_idx=0) == []
    return seen["executor"]


@pytest.mark.parametrize("hardware", HARDWARE)
@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_every_hardware_resolves_for_every_launcher(tmp_path, hardware: str, launcher: str) -> None:
    cfg = launcher_cfg(tmp_path, launcher, f"hardware={hardware}")
    resolved = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    hw = cfg.hardware
    assert (resolved["gpus_per_node"], resolved["cpus_per_task"], resolved["mem_gb"], resolved["timeout_min"]) == \
        (hw.gpus_per_node, hw.cpus_per_task, hw.mem_gb, hw.timeout_min)
    if launcher == "slurm":
        assert resolved["partition"] == hw.partition
        assert resolved["max_num_timeout"] == hw.max_num_timeout >= 1  # requeue on timeout is on


def test_h100_request_reaches_the_sbatch_script(tmp_path, monkeypatch) -> None:
    cfg = launcher_cfg(tmp_path, "slurm", "hardware=h100", "hardware.partition=gpu")
    executor = captured_executor(cfg, monkeypatch)
    script = executor._executor._make_submission_file_text("python -c pass", "uid")
    for line in ("--gpus-per-node=1", "--cpus-per-task=16", "--mem=128GB", "--time=720",
                 "--partition=gpu", "--ntasks-per-node=1", "--signal=USR2@120", "--open-mode=append"):
        assert f"#SBATCH {line}" in script.splitlines(), line
    assert executor._executor.max_num_timeout == 5
    assert str(tmp_path / ".submitit") in str(executor.folder)


def test_launcher_keys_override_the_hardware_request(tmp_path, monkeypatch) -> None:
    cfg = launcher_cfg(tmp_path, "slurm", "hardware=cpu", "hydra.launcher.mem_gb=2",
                       "hydra.launcher.cpus_per_task=1")
    script = captured_executor(cfg, monkeypatch)._executor._make_submission_file_text("x", "uid")
    assert "#SBATCH --mem=2GB" in script and "#SBATCH --cpus-per-task=1" in script
    assert "#SBATCH --partition" not in script  # null partition: the cluster's default


def test_local_launcher_builds_a_local_executor(tmp_path, monkeypatch) -> None:
    cfg = launcher_cfg(tmp_path, "local", "hardware=cpu")
    executor = captured_executor(cfg, monkeypatch)
    assert isinstance(executor._executor, submitit.LocalExecutor)
    assert executor._executor.parameters["timeout_min"] == cfg.hardware.timeout_min


EXPERIMENTS = {  # recipe -> (group choices, fixed values, swept values)
    "mezo_opt13b_superglue": ({"model": "opt-13b", "solver": "mezo", "hardware": "h100", "peft": "none"},
                              {"solver.steps": 20000, "solver.batch_size": 16, "solver.eps": 1e-3},
                              {"task": 11, "solver.lr": 2}),
    "spsa15_opt13b_sst2_grid": ({"model": "opt-13b", "solver": "spsa15", "task": "sst2"},
                                {"solver.lr": 1e-4, "solver.saturating_alpha": 0.1, "solver.lambda_reg": 1.0},
                                {"solver.n_perts": 3, "solver.batch_size": 3}),
    "subzero_opt1.3b_sst2_prompt": ({"model": "opt-1.3b", "solver": "subzero", "task": "sst2", "peft": "prompt"},
                                    {"peft.num_virtual_tokens": 10, "solver.rank": 8}, {"solver.lr": 2}),
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_recipes_compose_and_validate(tmp_path, name: str) -> None:
    choices, values, sweeps = EXPERIMENTS[name]
    cfg = launcher_cfg(tmp_path, "slurm", f"+experiment={name}")
    for group, option in choices.items():
        assert cfg.hydra.runtime.choices[group] == option
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, key
    params = cfg.hydra.sweeper.params
    assert {k: len(str(v).split(",")) for k, v in params.items()} == sweeps
    hydra.utils.instantiate(cfg.solver)  # the solver's own checks (rank, alpha, n_perts...) pass
    if name == "spsa15_opt13b_sst2_grid":
        for n_perts in (40, 160, 640):
            hydra.utils.instantiate(cfg.solver, n_perts=n_perts, batch_size=512)
