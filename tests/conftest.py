"""Shared test helpers: paths, the SST-2 data (the shared GLUE copy or a written fixture),
and a CLI runner for `python main.py` in a subprocess with the hub switched off."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_SST2 = ROOT.parent / "shared" / "assets" / "sst2"

POSITIVE = ["a gorgeous , witty , seductive movie", "the best film of the year", "moving and funny",
            "an utterly charming and hilarious film", "a masterpiece of quiet power", "wonderful acting"]
NEGATIVE = ["a dull , boring mess", "the worst movie of the year", "tedious and painfully unfunny",
            "an ugly , hateful film", "a waste of time", "clumsy and lifeless"]


def write_sst2_fixture(folder: Path, rows: int = 60) -> Path:
    """A small SST-2-shaped copy (sentence<TAB>label) for machines without shared/."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", rows), ("dev.tsv", rows // 2)):
        with (folder / name).open("w", newline="") as fh:
            out = csv.writer(fh, delimiter="\t")
            out.writerow(["sentence", "label"])
            for i in range(n):
                pool, label = (POSITIVE, 1) if i % 2 else (NEGATIVE, 0)
                out.writerow([f"{pool[i % len(pool)]} ({i})", label])
    return folder


@pytest.fixture(scope="session")
def sst2_dir(tmp_path_factory) -> Path:
    if (SHARED_SST2 / "train.tsv").is_file():
        return SHARED_SST2
    return write_sst2_fixture(tmp_path_factory.mktemp("sst2"))


def run_main(*overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "main.py", *overrides], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def assert_fails_early(tmp_path: Path, overrides: list[str], expected: str, allowed: str) -> None:
    """`python main.py <overrides>` exits non-zero with one stderr line naming the field and the
    allowed values, before the model loads, leaving no run directory behind."""
    run_dir = tmp_path / "run"
    proc = run_main(*overrides, f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and allowed in lines[0], lines[0]
    assert "trainable parameters" not in proc.stderr + proc.stdout  # the model never loaded
    assert not run_dir.exists()  # nothing half-written
