"""zoexp entry point: `python main.py [group=option ...] [-m sweeps]`. See README.md."""

import hydra
from omegaconf import DictConfig

from zoexp.cli import preflight
from zoexp.tuning import register_optuna_sweeper


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """One run; returns its best dev metric (what `-m hydra/sweeper=optuna` maximises)."""
    from zoexp.run import run
    from zoexp.tuning import objective_value

    return objective_value(run(cfg))


if __name__ == "__main__":
    preflight()
    register_optuna_sweeper()
    main()
