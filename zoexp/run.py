"""cfg -> objects -> loop -> metrics: the one place where a run is assembled.

Order matters: every cheap check (config values, solver hyperparameters, dataset files and
columns) runs before the model loads, so bad input costs seconds, not a 26 GB download. A
ConfigError is printed as one line and the run directory Hydra just created is removed.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zoexp.errors import ConfigError

log = logging.getLogger("zoexp")
RESULT_FILES = ("metrics.jsonl", "summary.json", "checkpoint.pt", "trajectory.jsonl")


def _instantiate(node: DictConfig, group: str, **kwargs):
    """hydra.utils.instantiate, with argument errors turned into one-line ConfigErrors."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - hydra wraps the constructor's exception
        cause = exc.__cause__ if isinstance(exc.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(group, f"cannot build {node.get('_target_')}: {str(exc).splitlines()[-1]}") from None


def build_peft(cfg: DictConfig):
    if cfg.get("peft") is None or cfg.peft.get("_target_") is None:
        return None
    return _instantiate(cfg.peft, "peft")


def prepare(cfg: DictConfig) -> dict:
    """Everything that can be checked without the model: returns the built cheap objects
    (and joins the other processes of a distributed run, whose split the solver checks)."""
    from zoexp.distributed import init_ranks
    from zoexp.model import check_model_source, resolve_device, resolve_dtype
    from zoexp.placement import build_placement

    device = resolve_device(cfg.hardware.device)
    resolve_dtype(cfg.model.dtype)
    check_model_source(cfg.model.name)
    task = _instantiate(cfg.task, "task")
    solver = _instantiate(cfg.solver, "solver")
    peft_config = build_peft(cfg)
    from zoexp.objectives import resolve_objective_name

    resolve_objective_name(cfg.objective, task.kind)
    from zoexp.graphs import resolve_cuda_graphs

    cuda_graphs = resolve_cuda_graphs(cfg.hardware.get("cuda_graphs", "auto"), device, solver)
    if solver.trains and solver.batch_size > task.num_train:
        raise ConfigError("solver.batch_size", f"got {solver.batch_size}, larger than task.num_train="
                          f"{task.num_train}; allowed: at most {task.num_train}")
    ranks, device = init_ranks(device)
    if ranks.world > 1:
        log.info("process %d of %d on %s", ranks.rank + 1, ranks.world, device)
    placement = build_placement(cfg.hardware, device, ranks)  # offload / shard (zoexp.placement)
    placement.check(solver, peft_config)
    cuda_graphs = placement.cuda_graphs(cfg.hardware.get("cuda_graphs", "auto"), cuda_graphs)
    ranks = placement.ranks
    solver.distribute(ranks)
    solver.place(placement)
    data = task.sample()
    log.info("data: %d train / %d dev / %d test examples", *(len(data[k]) for k in ("train", "dev", "test")))
    return {"device": device, "task": task, "solver": solver, "peft": peft_config, "data": data,
            "ranks": ranks, "placement": placement, "cuda_graphs": cuda_graphs}


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    from zoexp.checkpoint import Checkpointer
    from zoexp.distributed import close
    from zoexp.loop import Loop
    from zoexp.model import load_model
    from zoexp.objectives import CandidateScorer, build_objective
    from zoexp.tracking import Tracker

    parts = prepare(cfg)
    torch.manual_seed(cfg.hardware.seed)
    placement = parts["placement"]
    bundle = load_model(cfg.model.name, cfg.model.dtype, placement.load_device(), parts["peft"],
                        revision=cfg.model.get("revision"))
    placement.place(bundle)
    log.info("model %s: %.1fM trainable parameters on %s (%s)", cfg.model.name,
             bundle.num_trainable() / 1e6, bundle.device, cfg.model.dtype)
    scorer = CandidateScorer(bundle.model, bundle.tokenizer, bundle.device, max_length=cfg.model.max_length,
                             cuda_graphs=parts["cuda_graphs"])
    objective = build_objective(cfg.objective, scorer, parts["task"])
    solver, ranks = parts["solver"], parts["ranks"]
    solver.setup(bundle.params, objective, parts["data"]["train"])
    # One run dir for all processes: rank 0's (torchrun starts one Hydra per process); only
    # rank 0 writes in it, the others read its checkpoint when the run resumes.
    shared_dir = Path(ranks.from_main(str(run_dir)))
    tracker = Tracker(shared_dir, wandb_logger=_build_wandb(cfg, run_dir) if ranks.main else None,
                      write=ranks.main)
    try:
        loop = Loop(solver, objective, parts["task"], parts["data"], tracker,
                    Checkpointer(shared_dir, every=cfg.checkpoint_every, write=ranks.main),
                    bundle.device, seed=cfg.hardware.seed, eval_batch_size=cfg.eval_batch_size,
                    group_by_length=cfg.group_by_length, keep_best=cfg.keep_best, ranks=ranks)
        summary = loop.run()
        if scorer.graphed is not None:
            log.info(scorer.graphed.summary())
    finally:
        tracker.finish()
        close(ranks)
    if not ranks.main:
        if shared_dir != run_dir:
            _remove_if_empty_run(run_dir)  # what Hydra wrote for this process alone
        return summary
    metric = summary["metric"]
    print(f"dev {metric}: {summary[f'best_dev_{metric}']:.4f} (best, step {summary['best_step']})   "
          f"test {metric}: {summary.get(f'test_{metric}', float('nan')):.4f}   "
          f"fwd passes: {summary['fwd_passes']}   run dir: {run_dir}")
    return summary


def _build_wandb(cfg: DictConfig, run_dir: Path):
    if cfg.logger.get("_target_") is None:
        return None
    return hydra.utils.instantiate(cfg.logger, cfg=cfg, run_dir=str(run_dir))


def _remove_if_empty_run(run_dir: Path) -> None:
    """Remove what Hydra wrote for a run that failed validation (no results in it)."""
    if run_dir.is_dir() and not any((run_dir / f).exists() for f in RESULT_FILES):
        shutil.rmtree(run_dir, ignore_errors=True)


def run(cfg: DictConfig) -> dict:
    """Entry point called by main.py's @hydra.main."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return execute(cfg, run_dir)
    except ConfigError as err:
        logging.shutdown()
        _remove_if_empty_run(run_dir)
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise  # let the sweeper record this job as failed; others still run
        sys.exit(2)


def resolved(cfg: DictConfig) -> dict:
    """The fully resolved config as plain containers (for W&B and summaries)."""
    return OmegaConf.to_container(cfg, resolve=True)
