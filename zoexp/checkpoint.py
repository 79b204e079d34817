"""Checkpoints for preemption, and the seed trajectory: everything a run needs to continue as
if never stopped.

A checkpoint holds the trainable parameters, the best-on-dev copy, the solver state, the
step, the loop's bookkeeping and how many metric records were written. Data order and ZO
seeds are pure functions of (seed, step), so no RNG state is needed to continue exactly.

Crash safety: the checkpoint is written to `checkpoint.pt.tmp`, fsynced and renamed over the
previous one, so a kill or a full disk at any moment leaves the last good checkpoint in
place; a full disk is reported in one line that says which checkpoint survived. Before each
checkpoint the JSONL files are fsynced, so the records a checkpoint counts are on disk.

Every step's solver record goes to `trajectory.jsonl` (the seed trajectory: a few numbers per
step), from which `zoexp.replay` rebuilds weights. Its first line is a header,
`{"format": "zoexp-trajectory", "version": 2, "seed_bits": 64}`; a file without it is
version 1 (31-bit direction seeds, written before December 2026) and still replays.
On resume the trajectory is cut back to the checkpoint's step (a torn last line dropped);
a run that starts without a checkpoint starts both files afresh.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from zoexp import jsonl
from zoexp.jsonl import CorruptFile
from zoexp.rundir import RunDirGuard  # noqa: F401 - the Hydra callback's historical home

log = logging.getLogger("zoexp")

TRAJECTORY_FORMAT = "zoexp-trajectory"
TRAJECTORY_VERSION = 2
LEGACY_SEED_BITS = 31  # trajectory version 1 (no header line)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM)


class WriteFailed(RuntimeError):
    """Writing a run file failed (full disk, quota, read-only); one line, says what survived."""


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (torch wraps file errors in a RuntimeError), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def trajectory_header(seed_bits: int) -> dict:
    return {"format": TRAJECTORY_FORMAT, "version": TRAJECTORY_VERSION, "seed_bits": seed_bits}


def read_trajectory(path: Path) -> tuple[tuple[bytes, dict] | None, list[tuple[bytes, dict]]]:
    """(header line or None for version 1, [(raw line, record)]) -- a torn last line dropped."""
    lines = jsonl.read_lines(path)
    header = None
    if lines and lines[0][1].get("format") == TRAJECTORY_FORMAT:
        header, lines = lines[0], lines[1:]
        if header[1].get("version") != TRAJECTORY_VERSION:
            raise CorruptFile(path, f"trajectory format version {header[1].get('version')!r}; "
                              f"allowed: {TRAJECTORY_VERSION} (or no header: version 1)")
    for number, (_, record) in enumerate(lines, start=2 if header else 1):
        if not isinstance(record.get("step"), int) or isinstance(record.get("step"), bool):
            raise CorruptFile(path, f"line {number} has no integer 'step'; allowed: trajectory records")
    return header, lines


def seed_bits_of(header: tuple[bytes, dict] | None) -> int:
    return int(header[1].get("seed_bits", 64)) if header else LEGACY_SEED_BITS


class Checkpointer:
    def __init__(self, run_dir: Path, every: int = 0, write: bool = True) -> None:
        """`write=False` (ranks other than 0 of a distributed run): read, never write."""
        self.path = Path(run_dir) / "checkpoint.pt"
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.trajectory_path = Path(run_dir) / "trajectory.jsonl"
        self.every, self.write = every, write
        self.saved_step: int | None = None

    def due(self, step: int, last: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < last

    def save(self, state: dict, step: int) -> None:
        """Temp file, fsync, rename: the previous checkpoint stays intact until this one is whole."""
        if not self.write:
            self.saved_step = step  # every rank agrees on when the last checkpoint was taken
            return
        jsonl.sync(self.trajectory_path)
        try:
            with self.tmp_path.open("wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(self.tmp_path, self.path)
        except (OSError, RuntimeError) as exc:
            cause = os_error(exc)
            self.tmp_path.unlink(missing_ok=True)
            if cause is None or cause.errno not in WRITE_ERRNOS:
                raise
            free = shutil.disk_usage(self.path.parent).free / 2**20
            kept = (f"the previous checkpoint (step {self.saved_step}) is intact" if self.saved_step is not None
                    else "there is no earlier checkpoint")
            raise WriteFailed(f"{self.path}: {cause.strerror} while writing the checkpoint of step {step} "
                              f"({free:.1f} MiB free); {kept} -- make room and rerun the same command "
                              f"to resume") from None
        jsonl.sync_dir(self.path.parent)
        self.saved_step = step

    def load(self) -> dict | None:
        for leftover in (self.tmp_path, self.path.with_suffix(".tmp")):  # .tmp: before December 2026
            if leftover.exists() and self.write:
                log.warning("removed %s, a partial checkpoint left by an interrupted write", leftover)
                leftover.unlink()
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise CorruptFile(self.path, f"cannot be read ({str(exc).strip().splitlines()[0][:120]}); "
                              "allowed: a checkpoint written by zoexp (delete it to restart the run)") from None
        self.saved_step = state["loop"].step
        return state

    # ---- the seed trajectory ---------------------------------------------------------------
    def record(self, step: int, record: dict) -> None:
        if self.write:
            jsonl.append(self.trajectory_path, {"step": step, **record})

    def start_trajectory(self, seed_bits: int) -> int:
        """A run without a checkpoint: the trajectory starts afresh (what an interrupted run
        left is removed). Returns how many records were removed."""
        path = self.trajectory_path
        stale = path.read_bytes().count(b'"step"') if path.exists() else 0  # whatever state it is in
        if self.write:
            jsonl.rewrite(path, [json.dumps(trajectory_header(seed_bits)).encode() + b"\n"])
        return stale

    def resume_trajectory(self, steps: int) -> tuple[int, int]:
        """Cut the trajectory back to the checkpoint's `steps` records; (seed bits of its
        format, records dropped). A record the checkpoint needs that is missing is an error."""
        header, lines = read_trajectory(self.trajectory_path)
        kept = [(raw, rec) for raw, rec in lines if rec["step"] < steps]
        if [rec["step"] for _, rec in kept] != list(range(steps)):
            found = [rec["step"] for _, rec in kept]
            raise CorruptFile(self.trajectory_path, f"holds steps {_span(found)} but the checkpoint is at step "
                              f"{steps}; allowed: records of steps 0..{steps - 1}, each once")
        raws = ([header[0]] if header else []) + [raw for raw, _ in kept]
        if self.write and sum(map(len, raws)) != self.trajectory_path.stat().st_size:
            jsonl.rewrite(self.trajectory_path, raws)
        return seed_bits_of(header), len(lines) - len(kept)


def _span(steps: list[int]) -> str:
    if not steps:
        return "none"
    return f"{steps[0]}..{steps[-1]} ({len(steps)} records)"
