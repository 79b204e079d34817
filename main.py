"""zoexp entry point: `python main.py [group=option ...] [-m sweeps]`. See README.md."""

import hydra
from omegaconf import DictConfig

from zoexp.cli import preflight


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from zoexp.run import run

    run(cfg)


if __name__ == "__main__":
    preflight()
    main()
