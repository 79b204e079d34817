"""cfg -> objects -> loop -> metrics: the one place where a run is assembled.

Order matters: every cheap check (config values, solver hyperparameters, dataset files and
columns) runs before the model loads, so bad input costs seconds, not a 26 GB download. A
ConfigError is printed as one line and the run directory Hydra just created is removed.

How a run ends (one line on stderr, and the exit code; see zoexp/errors.py): bad input or an
unusable run dir -> `error: <field>: ...`, 2; training diverged -> 3 (summary.json says
`diverged: true`); SIGTERM -> a message and 143 (after a checkpoint); a full disk -> 1 with what
survived. In a sweep (MULTIRUN) the job raises instead of exiting, so the sweeper records it
as failed and runs the others (`zoexp.summarize.SummaryCallback`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zoexp.checkpoint import WRITE_ERRNOS, WriteFailed, os_error
from zoexp.errors import ConfigError, Diverged, RunDirError, Terminated
from zoexp.jsonl import CorruptFile
from zoexp.rundir import RunLock, claim, resolve
from zoexp.signals import NEVER, GracefulStop
from zoexp.solvers.base import check, is_number

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


def check_run_config(cfg: DictConfig) -> None:
    """The top-level knobs and the values the run reads directly (not through a constructor)."""
    from zoexp.loop import ON_DIVERGENCE

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    check("eval_batch_size", integer(cfg.eval_batch_size) and cfg.eval_batch_size >= 1, cfg.eval_batch_size,
          "an integer >= 1")
    check("checkpoint_every", integer(cfg.checkpoint_every) and cfg.checkpoint_every >= 0, cfg.checkpoint_every,
          "an integer >= 0 (0: no periodic checkpoints)")
    for key in ("group_by_length", "keep_best"):
        check(key, isinstance(cfg[key], bool), cfg[key], "true or false")
    on_divergence = cfg.get("on_divergence", "stop")
    check("on_divergence", on_divergence in ON_DIVERGENCE, on_divergence, " or ".join(ON_DIVERGENCE))
    progress = cfg.get("progress_every_s", 30)
    check("progress_every_s", is_number(progress) and progress >= 0, progress,
          "a number of seconds >= 0 (0: no progress lines)")
    check("hardware.seed", integer(cfg.hardware.seed) and cfg.hardware.seed >= 0, cfg.hardware.seed,
          "an integer >= 0")
    check("model.max_length", integer(cfg.model.max_length) and cfg.model.max_length >= 2, cfg.model.max_length,
          "an integer >= 2 (prompt and answer tokens the model sees)")


def prepare(cfg: DictConfig) -> dict:
    """Everything that can be checked without the model: returns the built cheap objects
    (and joins the other processes of a distributed run, whose split the solver checks)."""
    from zoexp.distributed import init_ranks
    from zoexp.model import check_model_source, resolve_device, resolve_dtype
    from zoexp.typecheck import check_node
    from zoexp.placement import build_placement

    check_run_config(cfg)
    device = resolve_device(cfg.hardware.device)
    resolve_dtype(cfg.model.dtype)
    check_model_source(cfg.model.name)
    for group in ("task", "solver", "peft"):
        check_node(cfg.get(group), group)
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


def execute(cfg: DictConfig, run_dir: Path, stop: GracefulStop = NEVER) -> dict:
    from zoexp.checkpoint import Checkpointer
    from zoexp.distributed import close
    from zoexp.loop import Loop
    from zoexp.model import load_model
    from zoexp.objectives import CandidateScorer, build_objective
    from zoexp.tracking import Tracker

    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        log.info("SLURM job %s restarted (requeue #%s): continuing in %s", os.environ.get("SLURM_JOB_ID", "?"),
                 os.environ["SLURM_RESTART_COUNT"], run_dir)
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
                    group_by_length=cfg.group_by_length, keep_best=cfg.keep_best, ranks=ranks,
                    on_divergence=cfg.get("on_divergence", "stop"),
                    progress_every_s=cfg.get("progress_every_s", 30), stop=stop)
        summary = loop.run()
        if scorer.graphed is not None:
            log.info(scorer.graphed.summary())
    finally:
        tracker.finish()
        close(ranks)
    if not ranks.main:
        if shared_dir != run_dir:
            _remove_if_empty_run(run_dir, ours=True)  # what Hydra wrote for this process alone
        return summary
    metric = summary["metric"]
    best = summary[f"best_dev_{metric}"]
    dev = (f"dev {metric}: {best:.4f} (best, step {summary['best_step']})" if best is not None
           else f"dev {metric}: - (no dev examples: task.num_dev=0)")
    skipped = f"   skipped steps: {summary['skipped_steps']}" if summary.get("skipped_steps") else ""
    print(f"{dev}   test {metric}: {summary.get(f'test_{metric}', float('nan')):.4f}   "
          f"fwd passes: {summary['fwd_passes']}{skipped}   run dir: {run_dir}")
    return summary


def _build_wandb(cfg: DictConfig, run_dir: Path):
    if cfg.logger.get("_target_") is None:
        return None
    return hydra.utils.instantiate(cfg.logger, cfg=cfg, run_dir=str(run_dir))


def _remove_if_empty_run(run_dir: Path, ours: bool = False) -> None:
    """Remove what Hydra wrote for a run that failed validation (no results in it), if this
    process owns the directory (its lock, or `ours`) -- never one another process writes."""
    lock = RunLock.held(run_dir)
    if (lock is None and not ours) or not run_dir.is_dir() or any((run_dir / f).exists() for f in RESULT_FILES):
        return
    if lock is not None:
        lock.release()
    shutil.rmtree(run_dir, ignore_errors=True)


def _diverged_message(err: Diverged, cfg: DictConfig) -> str:
    solver = cfg.get("solver") or {}
    knobs = ", ".join(f"solver.{k}={solver[k]}" for k in ("lr", "eps") if k in solver)
    return (f"error: {err} ({knobs}); the step was not applied and the run stopped (on_divergence=stop; "
            f"summary.json says diverged: true, no test score) -- lower solver.lr, or on_divergence=skip_step "
            f"to skip such steps")


def run(cfg: DictConfig) -> dict:
    """Entry point called by main.py's @hydra.main: runs `execute` and turns each way a run can
    end badly into one line and an exit code (or, in a sweep, a failed job)."""
    from zoexp.distributed import launched_rank

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    stop = GracefulStop().install()

    def fail(line: str, code: int, err: BaseException):
        print(line, file=sys.stderr)
        if multirun and code != 143:
            raise err  # let the sweeper record this job as failed; the others still run
        sys.exit(code)

    try:
        claim(run_dir, resolve(cfg), writer=launched_rank() == 0)
        return execute(cfg, run_dir, stop)
    except RunDirError as err:
        fail(f"error: {err}", 2, err)
    except ConfigError as err:
        logging.shutdown()
        _remove_if_empty_run(run_dir)
        fail(f"error: {err}", 2, err)
    except CorruptFile as err:
        fail(f"error: {err}", 2, err)
    except Diverged as err:
        fail(_diverged_message(err, cfg), 3, err)
    except Terminated as err:
        fail(f"{err} (run dir: {run_dir})", 143, err)
    except WriteFailed as err:
        fail(f"error: {err}", 1, err)
    except (OSError, RuntimeError) as err:
        cause = os_error(err)
        if cause is None or cause.errno not in WRITE_ERRNOS:
            raise
        fail(f"error: {cause.filename or run_dir}: {cause.strerror}; files already written are intact (the "
             f"last checkpoint too) -- fix that and rerun the same command to resume", 1, err)
    finally:
        stop.uninstall()
        lock = RunLock.held(run_dir)
        if lock is not None:
            lock.release()


def resolved(cfg: DictConfig) -> dict:
    """The fully resolved config as plain containers (for W&B and summaries)."""
    return OmegaConf.to_container(cfg, resolve=True)
