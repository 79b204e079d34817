"""A run directory belongs to one run: one configuration, one writing process at a time.

Three guarantees, checked before anything is written into a directory:

* **Finished runs are never reused**: a directory with `summary.json` is refused.
* **One configuration per directory**: a run resumes (or restarts) only in a directory whose
  saved configuration equals its own, except for keys that cannot change a result
  (`MAY_CHANGE`: the logger, the SLURM request, how often to checkpoint or print progress).
  Otherwise the run stops with one line naming the differing keys (exit 2), and nothing in
  the directory changes. The saved configuration is `resolved_config.yaml` (fully resolved, written by
  the run itself; Hydra never rewrites it), or `.hydra/config.yaml` for a directory written
  before it existed.
* **One writer**: an exclusive lock file `run.lock` (`fcntl.flock`, released by the kernel
  when the process dies, so a lock left by a killed run is *stale* and is taken over with a
  message; the file records the owner's host and pid for that message). With several
  processes per run (`zoexp.distributed`) only rank 0 locks and writes.

Hydra rewrites `<run dir>/.hydra/` before the task function starts, so the checks run in
the Hydra callback `RunDirGuard` (`on_run_start` / `on_multirun_start`), and again in the
task (`claim`) for what a callback cannot see: each job of a sweep, a requeued SLURM job
(same directory, same configuration: it resumes), a run whose callbacks were switched off.
"""

from __future__ import annotations

import copy
import datetime
import errno
import fcntl
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from zoexp.errors import ConfigError, RunDirError

log = logging.getLogger("zoexp")

LOCK_NAME = "run.lock"
CONFIG_NAME = "resolved_config.yaml"
# Keys whose value may differ between a run and its resumption: none of them changes a number
# the run produces. (The logger mirrors metrics; the SLURM request sizes the allocation --
# processes per run split the directions of a step without changing them, see
# zoexp/distributed.py; checkpoints and progress lines do not change the trajectory.)
MAY_CHANGE = ("logger", "hardware.gpus_per_node", "hardware.tasks_per_node", "hardware.cpus_per_task",
              "hardware.mem_gb", "hardware.timeout_min", "hardware.partition", "hardware.max_num_timeout",
              "hardware.num_workers", "checkpoint_every", "progress_every_s")


# ---- configurations -----------------------------------------------------------------------
def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'solver': {'lr': 1}} -> {'solver.lr': 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # nan == nan


def differing_keys(saved: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only), ignoring MAY_CHANGE."""
    a, b = flatten(saved), flatten(new)
    return sorted(k for k in set(a) | set(b)
                  if not _may_change(k) and not _same(a.get(k, "<absent>"), b.get(k, "<absent>")))


def task_config(config: DictConfig) -> DictConfig:
    """The config the task function receives (Hydra's own node removed), as run_job builds it."""
    task = copy.deepcopy(config)
    if "hydra" in task:
        with read_write(task), open_dict(task):
            del task["hydra"]
    return task


def resolve(config: DictConfig) -> dict:
    """The task config, fully resolved. A missing mandatory value or a broken interpolation
    is bad input: ConfigError naming the key."""
    try:
        return OmegaConf.to_container(task_config(config), resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        if type(exc).__name__ == "MissingMandatoryValue":
            raise ConfigError(key, f"got no value (??? in the config); allowed: a value on the command "
                              f"line, e.g. {key}=...") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(key, f"cannot resolve ({first}); allowed: a value or a valid interpolation") from None


def saved_config(run_dir: Path, hydra_copy: bool = True) -> dict | None:
    """The resolved configuration a directory belongs to, or None for a directory without one.
    `hydra_copy`: fall back to `.hydra/config.yaml` (before Hydra rewrites it: not in the task)."""
    path = run_dir / CONFIG_NAME
    try:
        if path.is_file():
            return yaml.safe_load(path.read_text())
        legacy = run_dir / ".hydra" / "config.yaml"
        if hydra_copy and legacy.is_file():
            cfg = OmegaConf.load(legacy)
            try:
                return OmegaConf.to_container(cfg, resolve=True)
            except OmegaConfBaseException:
                return OmegaConf.to_container(cfg, resolve=False)
    except (OSError, yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as exc:
        raise RunDirError("hydra.run.dir", f"got {run_dir}, whose saved configuration cannot be read "
                          f"({str(exc).splitlines()[0]}); allowed: a new directory") from None
    return None


def save_config(run_dir: Path, resolved: dict) -> None:
    """Write resolved_config.yaml once (atomically): from now on the directory belongs to it."""
    path = run_dir / CONFIG_NAME
    if path.exists():
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    os.replace(tmp, path)


def _describe(keys: list[str], saved: dict, new: dict, limit: int = 6) -> str:
    a, b = flatten(saved), flatten(new)
    parts = [f"{k}: {a.get(k, '<absent>')!r} there, {b.get(k, '<absent>')!r} now" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def check_same_config(run_dir: Path, resolved: dict, field: str = "hydra.run.dir",
                      hydra_copy: bool = True) -> None:
    """RunDirError when `run_dir` belongs to another configuration."""
    saved = saved_config(run_dir, hydra_copy)
    if saved is None:
        return
    keys = differing_keys(saved, resolved)
    if keys:
        raise RunDirError(field, f"got {run_dir}, which holds a run of another configuration "
                          f"(differs in {', '.join(keys)} -- {_describe(keys, saved, resolved)}); "
                          f"allowed: the same configuration to resume it, or a new directory")


def check_writable(run_dir: Path, field: str = "hydra.run.dir") -> None:
    """RunDirError when the directory cannot be created or written (a file in the way, a
    read-only file system, no permission), before Hydra tries and fails with a traceback."""
    for parent in (run_dir, *run_dir.parents):
        if parent.exists():
            break
    if parent.exists() and not parent.is_dir():
        raise RunDirError(field, f"got {run_dir}, but {parent} is a file; allowed: a directory path")
    if not os.access(parent, os.W_OK | os.X_OK):  # also false on a read-only file system, for root too
        raise RunDirError(field, f"got {run_dir}, but {parent} is not writable (permissions or a read-only "
                          f"file system); allowed: a writable directory")


# ---- the lock -------------------------------------------------------------------------------
def _owner_text() -> str:
    now = datetime.datetime.now().isoformat(timespec="seconds")
    return f"host={socket.gethostname()} pid={os.getpid()} since={now}\n"


def _read_owner(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _pid_alive_here(owner: str) -> bool:
    """True when `owner` names a live process on this host (the fallback without flock)."""
    fields = dict(part.split("=", 1) for part in owner.split() if "=" in part)
    if fields.get("host") != socket.gethostname() or not fields.get("pid", "").isdigit():
        return False
    try:
        os.kill(int(fields["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(fields["pid"]) != os.getpid()


class RunLock:
    """The exclusive right to write one run directory, held for the life of this process
    (or until `release`). Acquiring twice in one process returns the same lock."""

    _held: dict[Path, "RunLock"] = {}

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir, self.fd = run_dir, fd
        self.path = run_dir / LOCK_NAME

    @classmethod
    def held(cls, run_dir: Path) -> "RunLock | None":
        return cls._held.get(Path(run_dir).resolve())

    @classmethod
    def acquire(cls, run_dir: Path, field: str = "hydra.run.dir") -> "RunLock":
        run_dir = Path(run_dir).resolve()
        if run_dir in cls._held:
            return cls._held[run_dir]
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            previous = _read_owner(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunDirError(field, f"got {run_dir}, which is in use by another process "
                                  f"({previous or 'owner unknown'}); allowed: a directory no running "
                                  f"process writes (wait for it, or stop it)") from None
            except OSError as exc:  # a file system without flock: fall back to the owner's pid
                if exc.errno not in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    os.close(fd)
                    raise
                if _pid_alive_here(previous):
                    os.close(fd)
                    raise RunDirError(field, f"got {run_dir}, which is in use by another process "
                                      f"({previous}); allowed: a directory no running process writes") from None
            try:  # the path must still name the file we locked (a finishing owner unlinks it)
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if previous:
            print(f"warning: {run_dir}: took over the stale lock of {previous} (that process is gone)",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner_text().encode(), 0)
        os.fsync(fd)
        lock = cls(run_dir, fd)
        cls._held[run_dir] = lock
        return lock

    @staticmethod
    def busy(run_dir: Path) -> str | None:
        """The owner of a lock another live process holds on `run_dir`, else None (not taking it)."""
        path = Path(run_dir) / LOCK_NAME
        if not path.exists() or RunLock.held(run_dir) is not None:
            return None
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd) or "owner unknown"
        except OSError:
            owner = _read_owner(fd)
            return owner if _pid_alive_here(owner) else None
        finally:
            os.close(fd)  # closing drops a lock we may just have taken
        return None

    def release(self) -> None:
        """Unlink the lock file (a clean exit leaves no stale lock) and drop the lock."""
        if self.fd < 0:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1
        RunLock._held.pop(self.run_dir, None)


def claim(run_dir: Path, resolved: dict, writer: bool) -> RunLock | None:
    """In the task, before anything is written: lock the directory (the writing process only),
    check it belongs to this configuration, and record the configuration if it is new."""
    lock = RunLock.acquire(run_dir) if writer else None
    try:
        check_same_config(run_dir, resolved, hydra_copy=False)  # Hydra has just rewritten .hydra/
        if writer:
            save_config(run_dir, resolved)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


# ---- the Hydra callback ---------------------------------------------------------------------
def _refuse(err: ConfigError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


class RunDirGuard(Callback):
    """Refuses a run directory that is finished, busy, unwritable or holds another
    configuration, before Hydra writes anything into it (see the module docstring).

    A requeued SLURM job passes through neither hook: `claim` checks it in the task.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from zoexp.distributed import launched_rank

        run_dir = Path(config.hydra.run.dir)
        try:
            resolved = resolve(config)
            if (run_dir / "summary.json").exists():
                raise RunDirError("hydra.run.dir", f"{run_dir} already holds a finished run; allowed: a new "
                                  "directory (the default is per-date/time) -- results are never overwritten")
            check_writable(run_dir)
            check_same_config(run_dir, resolved)
            if launched_rank() == 0:
                RunLock.acquire(run_dir)
        except ConfigError as err:
            _refuse(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            done = sorted(p.parent.name for p in sweep_dir.glob("*/summary.json"))
            if done:
                raise RunDirError("hydra.sweep.dir", f"{sweep_dir} already holds finished jobs {done}; allowed: "
                                  "a new directory (the default is per-date/time) -- results are never overwritten")
            check_writable(sweep_dir, "hydra.sweep.dir")
            busy = [(p.parent.name, owner) for p in sorted(sweep_dir.glob(f"*/{LOCK_NAME}"))
                    if (owner := RunLock.busy(p.parent))]
            if busy:
                raise RunDirError("hydra.sweep.dir", f"{sweep_dir} has jobs in use by running processes "
                                  f"({busy[0][0]}: {busy[0][1]}); allowed: a directory no running process writes")
            self._check_same_sweep(sweep_dir, config)
        except ConfigError as err:
            _refuse(err)

    @staticmethod
    def _check_same_sweep(sweep_dir: Path, config: DictConfig) -> None:
        """A sweep directory with unfinished jobs belongs to the sweep that started them."""
        saved_path = sweep_dir / "multirun.yaml"
        if not saved_path.is_file() or not any(sweep_dir.glob("*/.hydra/config.yaml")):
            return
        saved = OmegaConf.load(saved_path)

        def comparable(cfg: DictConfig) -> dict:
            tree = OmegaConf.to_container(task_config(cfg), resolve=False)
            overrides = [o for o in OmegaConf.to_container(cfg.hydra.overrides.task)
                         if not _may_change(o.split("=", 1)[0].lstrip("+~"))]
            return {**tree, "sweep overrides": sorted(overrides)}

        old, new = comparable(saved), comparable(config)
        keys = differing_keys(old, new)
        if keys:
            raise RunDirError("hydra.sweep.dir", f"got {sweep_dir}, which holds unfinished jobs of another sweep "
                              f"(differs in {', '.join(keys)} -- {_describe(keys, old, new)}); allowed: the same "
                              "sweep to resume it, or a new directory")
