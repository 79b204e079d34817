"""Append-only JSON Lines files that survive a kill at any point (metrics, seed trajectory).

A process killed mid-`write` (SIGKILL, a lost node, a full disk) can leave the last line cut
short. Every reader here tolerates exactly that: a last line without its newline, or one that
does not parse, is a *torn* line -- dropped with a warning, never a reason to refuse a resume.
An unparsable line *before* the last one is real corruption and is reported with the file
and line number (`CorruptFile`), because silently skipping it would lose a record.

Writers append one whole line per `write` call; `sync` makes everything appended so far
durable (the loop calls it before each checkpoint, so a checkpoint never counts a record the
disk does not hold); `rewrite` replaces a file atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("zoexp")


class CorruptFile(ValueError):
    """A file zoexp reads is damaged beyond a torn last line. `str()` is one line."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path, self.message = Path(path), message
        super().__init__(f"{path}: {message}")


def append(path: Path, row: dict) -> None:
    """Append one JSON object as one line (one write call, so at most the last line tears)."""
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def sync(path: Path) -> None:
    """fsync `path` if it exists: what was appended survives a crash of the machine too."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(folder: Path) -> None:
    """fsync a directory, so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[tuple[bytes, dict]]:
    """(raw line with its newline, parsed object) for every whole line of `path`.

    A torn last line is dropped with a warning; any other line that is not a JSON object
    raises CorruptFile naming the line. A missing file reads as empty.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    raw = data.splitlines(keepends=True)
    out: list[tuple[bytes, dict]] = []
    for number, line in enumerate(raw, start=1):
        last = number == len(raw)
        if not line.strip():
            if last:
                continue
            raise CorruptFile(path, f"line {number} is empty; allowed: one JSON object per line")
        try:
            obj = json.loads(line) if line.endswith(b"\n") or not last else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            obj = None
        if not isinstance(obj, dict):
            if last:
                log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write",
                            path, len(line))
                continue
            raise CorruptFile(path, f"line {number} is not a JSON object ({line[:40]!r}...); "
                              "allowed: one JSON object per line (only the last line may be torn)")
        out.append((line, obj))
    return out


def rewrite(path: Path, lines: list[bytes]) -> None:
    """Replace `path` with `lines` atomically: a kill leaves either the old or the new file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.writelines(lines)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    sync_dir(path.parent)
