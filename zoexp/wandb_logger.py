"""W&B backend of the tracker (`logger=wandb`): one W&B run per job, one group per sweep.

- config: the resolved config, flattened to dotted keys (`solver.n_perts`), plus the Hydra
  group choices (`choice.solver`), so runs can be grouped and filtered by any of them;
- group: the sweep directory (every job of one `-m` sweep lands in one group); name: the
  job's overrides (`solver.lr=1e-4,solver.n_perts=40`); both can be set explicitly;
- resume: the run id is kept in `<run dir>/wandb_run_id`, and `resume="allow"` puts a
  requeued or resubmitted job back on the same W&B run;
- x-axes: `step` (the default) and `fwd_passes` (the ZO cost axis) are logged with every row
  and declared with `define_metric`; W&B's own step counter is not used, because a resumed job
  re-logs the steps after its last checkpoint and W&B drops non-monotonic steps;
- offline: `mode: null` defers to WANDB_MODE, so `WANDB_MODE=offline` writes to
  `<run dir>/wandb/offline-run-*` and `wandb sync <that dir>` uploads it later.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

RUN_ID_FILE = "wandb_run_id"
X_AXES = ("step", "fwd_passes")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'solver': {'n_perts': 40}} -> {'solver.n_perts': 40}; lists keep their positions."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, (dict, list)) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _hydra_job() -> tuple[str | None, str | None, dict[str, str]]:
    """(sweep dir in a multirun else None, override_dirname, group choices) when under Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None, {}
    hc = HydraConfig.get()
    sweep = str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if v is not None and not k.startswith("hydra/")}
    return sweep, hc.job.override_dirname or None, choices


def sweep_group(sweep_dir: str) -> str:
    """multirun/2026-11-23/19-02-11 -> 2026-11-23/19-02-11: the sweep's timestamp names the group."""
    parts = Path(sweep_dir).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(sweep_dir)


def persistent_run_id(run_dir: Path) -> str:
    """The W&B run id of this run dir, created on first use and reused on every restart."""
    path = Path(run_dir) / RUN_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class WandbLogger:
    """Mirror of the tracker's metrics in one W&B run (see the module docstring)."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, project: str = "zoexp", entity: str | None = None,
                 group: str | None = None, job_type: str | None = "train", name: str | None = None,
                 mode: str | None = None, tags: Sequence[str] | None = None) -> None:
        import wandb

        sweep_dir, override_name, choices = _hydra_job()
        config = flatten(OmegaConf.to_container(cfg, resolve=True))
        config.update({f"choice.{k}": v for k, v in choices.items()})
        if group is None and sweep_dir is not None:
            group = sweep_group(sweep_dir)
        self.run = wandb.init(
            project=project, entity=entity, group=group, job_type=job_type, name=name or override_name,
            mode=mode, tags=list(tags) if tags else None, config=config, dir=str(run_dir),
            id=persistent_run_id(Path(run_dir)), resume="allow",
        )
        for axis in X_AXES:
            self.run.define_metric(axis, hidden=False)
        self.run.define_metric("*", step_metric="step")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(dict(metrics) | {"step": step})

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self, exit_code: int | None = None) -> None:
        """End the run (idempotent); several jobs in one process each get their own run."""
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)
