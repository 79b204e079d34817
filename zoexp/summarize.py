"""Sweep summaries: one table per multirun, so a grid is compared at a glance.

    python -m zoexp.summarize <multirun dir> [--keys solver.n_perts solver.batch_size]
                              [--heatmap X Y] [--out DIR]

prints a rich table of best dev and test per configuration and writes, into --out (default:
the multirun dir), `jobs.csv` (one row per job), `summary.csv` and `summary.md` (one row per
configuration; repeated seeds are averaged) and `heatmap.png` (test metric over two swept keys;
where other keys vary, each cell shows the configuration with the best dev score, which is
how a grid is read without peeking at test). `SummaryCallback` does the same automatically at
the end of every `-m` sweep.

Contract with the run (what this module reads from `<multirun dir>/<job>/`):

- `.hydra/overrides.yaml`: the job's overrides. A key whose value differs between jobs is
  *swept*; the configuration of a job is its values of the swept keys (or of --keys).
- `.hydra/config.yaml` and `.hydra/hydra.yaml`: where a --keys value is not an override, it is
  read from the job config (`solver.lr`) or the group choice (`solver` -> `mezo`).
- `summary.json`, written when a run finishes. Required keys:
  `metric` (name of the task metric, e.g. "accuracy"), `best_dev_<metric>`, `test_<metric>`
  (floats), `steps`, `fwd_passes`, `best_step` (ints), `wall_time_s`, `peak_mem_gb` (floats).
  Other keys are kept in `jobs.csv`. Non-finite floats may be stored as strings ("nan").
- `<multirun dir>/.failed/<job>.json` (written by `SummaryCallback.on_job_end`): the overrides
  and the one-line error of a job that raised, even if its folder was removed.

A job without `summary.json`, or whose summary says `diverged: true`, is listed as failed,
never fatal; so is a job whose files are damaged (the warning names the file). A folder that
looks like a job but has no `.hydra/overrides.yaml` is dropped, with a warning that says so.
When jobs failed, `SummaryCallback` still writes the summary, then ends the sweep with exit
code 1 (the sweep continues past a failed job: its failure is recorded, not raised).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from zoexp.errors import ConfigError

log = logging.getLogger(__name__)

SEED_SUFFIX = "seed"  # keys ending in this are repetitions, averaged rather than grouped
REPORTED = ("steps", "fwd_passes", "wall_time_s", "peak_mem_gb")
FAILED_DIR = ".failed"  # <sweep dir>/.failed/<job>.json: written by SummaryCallback.on_job_end


@dataclass
class Job:
    """One job folder of a multirun."""

    name: str
    path: Path
    overrides: dict[str, Any]
    summary: dict[str, Any] | None
    error: str | None = None
    values: dict[str, Any] = field(default_factory=dict)  # values of the grouping keys

    @property
    def ok(self) -> bool:
        return self.summary is not None


def _parse_value(text: str) -> Any:
    """'1e-4' -> 1e-4, '16' -> 16, 'spsa15' -> 'spsa15' (YAML scalars, as Hydra reads them)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads '1e-4' as a string
        except ValueError:
            return value
    return value if isinstance(value, (int, float, bool)) or value is None else text


def _parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    out = {}
    for line in lines:
        if "=" not in line or line.startswith("~"):
            continue
        key, value = line.split("=", 1)
        out[key.lstrip("+")] = _parse_value(value)
    return out


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


JOB_FILES = ("summary.json", "metrics.jsonl", "checkpoint.pt", ".hydra/config.yaml")  # what marks a job folder


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p not in jobs):
        if any((folder / f).exists() for f in JOB_FILES):
            log.warning("job %s: dropped from the summary: %s has no .hydra/overrides.yaml (which says what "
                        "the job ran)", folder.name, folder)
    return jobs


def _read(path: Path, parse, what: str):
    """`parse(text)` of a job file, or (None, the one-line reason) when it is damaged."""
    try:
        return parse(path.read_text()), None
    except (OSError, ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("%s: corrupt %s, ignored (%s)", path, what, first)
        return None, f"corrupt {path.name} ({first})"


def load_jobs(sweep_dir: Path) -> list[Job]:
    failures = {}
    for p in (sweep_dir / FAILED_DIR).glob("*.json"):
        failure, problem = _read(p, json.loads, "failure record")
        if isinstance(failure, dict) and "error" in failure:
            failures[p.stem] = failure
        elif problem is None:
            log.warning("%s: corrupt failure record, ignored (not a JSON object with 'error')", p)
    jobs = []
    for path in _job_dirs(sweep_dir):
        listed, problem = _read(path / ".hydra" / "overrides.yaml", yaml.safe_load, "overrides file")
        if problem is None and not isinstance(listed or [], list):
            problem = "corrupt overrides.yaml (not a list)"
            log.warning("%s: %s, ignored", path / ".hydra" / "overrides.yaml", problem)
        overrides = _parse_overrides([str(o) for o in listed or []]) if problem is None else {}
        summary_path = path / "summary.json"
        summary = None
        if summary_path.exists():
            summary, bad = _read(summary_path, json.loads, "summary")
            if bad is None and not isinstance(summary, dict):
                summary, bad = None, "corrupt summary.json (not a JSON object)"
            problem = problem or bad
        failure = failures.pop(path.name, None)
        error = problem
        if summary is not None and summary.get("diverged"):
            error = f"diverged: {summary.get('diverged_reason', 'non-finite loss')}"
            summary = None
        elif summary is None and error is None:
            error = failure["error"] if failure else "no summary.json (job failed, was killed, or is still running)"
        elif error is not None:
            summary = None
        jobs.append(Job(path.name, path, overrides, summary, error))
    for name, failure in failures.items():  # failed before its folder was kept (e.g. bad config)
        jobs.append(Job(name, sweep_dir / name, _parse_overrides(failure.get("overrides") or []), None,
                        failure["error"]))
    return sorted(jobs, key=lambda j: (0, int(j.name)) if j.name.isdigit() else (1, j.name))


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in first-seen order."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if len({repr(j.overrides.get(k)) for j in jobs}) > 1]


def _lookup(job: Job, key: str) -> Any:
    if key in job.overrides:
        return job.overrides[key]
    hydra_dir = job.path / ".hydra"
    if not (hydra_dir / "config.yaml").exists():
        return None
    try:
        value = OmegaConf.select(OmegaConf.load(hydra_dir / "config.yaml"), key, default=None)
        if (value is None or OmegaConf.is_config(value)) and (hydra_dir / "hydra.yaml").exists():
            choices = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.runtime.choices")
            value = choices.get(key) if choices is not None else None  # a group: its chosen option
    except Exception as exc:  # noqa: BLE001 - a damaged YAML file: the value is unknown
        log.warning("job %s: cannot read %s from %s (%s)", job.name, key, hydra_dir,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return None
    return None if OmegaConf.is_config(value) else value


def _sort_key(value: Any) -> tuple:
    return (0, float(value), "") if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else (1, 0.0, str(value))


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if n < 2 else f"{mean:.4f} ± {std:.4f}"


def _cells(summary: "Summary", row: dict[str, Any]) -> list[str]:
    """Key values, n, dev and test as mean ± std over seeds, cost columns as means."""
    m = summary.metric
    cells = [str(row[k]) for k in summary.keys] + [str(row["n"])]
    cells += [_fmt(row[n], row[f"{n}_std"], row["n"]) for n in (f"best_dev_{m}", f"test_{m}")]
    cells += ["-" if math.isnan(row[n]) else f"{row[n]:.4g}" for n in REPORTED]
    return cells


@dataclass
class Summary:
    sweep_dir: Path
    metric: str
    keys: list[str]
    jobs: list[Job]
    rows: list[dict[str, Any]]  # one per configuration

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if not j.ok]


def summarize(sweep_dir: Path | str, keys: Sequence[str] | None = None) -> Summary:
    """Read every job of a multirun and aggregate best dev / test per configuration."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError("sweep_dir", f"got {sweep_dir}: no such directory; allowed: a multirun directory "
                          "(multirun/<date>/<time>)")
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise ConfigError("sweep_dir", f"got {sweep_dir}: no jobs found (neither <n>/.hydra/overrides.yaml nor "
                          f"{FAILED_DIR}/); allowed: a multirun directory (multirun/<date>/<time>)")
    if keys is None:
        keys = [k for k in swept_keys(jobs) if not k.endswith(SEED_SUFFIX)]
    keys = list(keys)
    for job in jobs:
        job.values = {k: _lookup(job, k) for k in keys}
    done = [j for j in jobs if j.ok]
    metric = done[0].summary["metric"] if done else "metric"
    groups: dict[tuple, list[Job]] = {}
    for job in done:
        groups.setdefault(tuple(repr(job.values[k]) for k in keys), []).append(job)
    rows = []
    for members in groups.values():
        row: dict[str, Any] = dict(members[0].values)
        row["n"] = len(members)
        for name in (f"best_dev_{metric}", f"test_{metric}", *REPORTED):
            row[name], row[f"{name}_std"] = _mean_std([_number(j.summary.get(name)) for j in members])
        row["jobs"] = " ".join(j.name for j in members)
        rows.append(row)
    rows.sort(key=lambda r: tuple(_sort_key(r[k]) for k in keys))
    return Summary(sweep_dir, metric, keys, jobs, rows)


# ---- output ---------------------------------------------------------------------------------
def _columns(summary: Summary) -> list[str]:
    m = summary.metric
    return [*summary.keys, "n", f"best_dev_{m}", f"test_{m}", *REPORTED]


def print_table(summary: Summary, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and pipes: wide enough for the full column names
            console = Console(width=160)
    m = summary.metric
    best_dev = max((r[f"best_dev_{m}"] for r in summary.rows), default=math.nan, key=_nan_low)
    table = Table(title=f"{summary.sweep_dir}  ({len(summary.jobs) - len(summary.failed)}/"
                        f"{len(summary.jobs)} jobs finished)")
    for col in _columns(summary):
        table.add_column(col, justify="left" if col in summary.keys else "right")
    for row in summary.rows:
        table.add_row(*_cells(summary, row), style="bold" if row[f"best_dev_{m}"] == best_dev else None)
    console.print(table)
    for job in summary.failed:
        console.print(f"[red]failed[/red] job {job.name} ({_override_text(job)}): {job.error}")


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _override_text(job: Job) -> str:
    return " ".join(f"{k}={v}" for k, v in job.overrides.items()) or "no overrides"


def write_files(summary: Summary, out: Path) -> dict[str, Path]:
    """jobs.csv, summary.csv and summary.md into `out`; returns their paths by name."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    job_rows = [{"job": j.name, "status": "ok" if j.ok else "failed", **j.values,
                 **{f"override:{k}": v for k, v in j.overrides.items()}, **(j.summary or {}),
                 "error": j.error or ""} for j in summary.jobs]
    paths = {"jobs.csv": out / "jobs.csv", "summary.csv": out / "summary.csv", "summary.md": out / "summary.md"}
    pd.DataFrame(job_rows).to_csv(paths["jobs.csv"], index=False)
    pd.DataFrame(summary.rows).to_csv(paths["summary.csv"], index=False)
    lines = [f"# Sweep {summary.sweep_dir}", "",
             "| " + " | ".join(_columns(summary)) + " |",
             "|" + "---|" * len(_columns(summary))]
    lines += ["| " + " | ".join(_cells(summary, row)) + " |" for row in summary.rows]
    if summary.failed:
        lines += ["", "Failed jobs:", ""]
        lines += [f"- job {j.name} ({_override_text(j)}): {j.error}" for j in summary.failed]
    paths["summary.md"].write_text("\n".join(lines) + "\n")
    return paths


def heatmap(summary: Summary, x: str, y: str, path: Path, value: str = "test") -> Path:
    """Heatmap of the `value` metric (test or best_dev) over keys x (columns) and y (rows).

    Where other keys vary too, a cell shows the configuration with the best mean dev score.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = summary.metric
    column = f"test_{m}" if value == "test" else f"best_dev_{m}"
    xs = sorted({repr(r[x]): r[x] for r in summary.rows}.values(), key=_sort_key)
    ys = sorted({repr(r[y]): r[y] for r in summary.rows}.values(), key=_sort_key)
    grid = np.full((len(ys), len(xs)), np.nan)
    best = np.full_like(grid, -np.inf)
    runs = np.zeros(grid.shape, dtype=int)
    for row in summary.rows:
        i, j = ys.index(row[y]), xs.index(row[x])
        dev = _nan_low(row[f"best_dev_{m}"])
        if dev > best[i, j] or np.isnan(grid[i, j]):
            best[i, j], grid[i, j], runs[i, j] = dev, row[column], row["n"]
    fig, ax = plt.subplots(figsize=(max(4.8, 2.2 + 1.3 * len(xs)), 1.6 + 0.9 * len(ys)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(ys)):
        for j in range(len(xs)):
            text = "no result" if np.isnan(grid[i, j]) else f"{grid[i, j]:.3f}"
            text += f"\n(n={runs[i, j]})" if runs[i, j] > 1 else ""
            ax.text(j, i, text, ha="center", va="center",
                    color="black" if np.isfinite(grid[i, j]) and grid[i, j] > middle else "white")
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{column}  ({'/'.join(summary.sweep_dir.parts[-2:])})", fontsize=10)
    fig.colorbar(image, ax=ax, label=column)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _heatmap_axes(summary: Summary, requested: Sequence[str] | None) -> tuple[str, str] | None:
    if requested:
        return requested[0], requested[1]
    varying = [k for k in summary.keys if len({repr(r[k]) for r in summary.rows}) > 1]
    return (varying[0], varying[1]) if len(varying) >= 2 else None


def report(sweep_dir: Path | str, keys: Sequence[str] | None = None, out: Path | str | None = None,
           heatmap_keys: Sequence[str] | None = None, console=None) -> Summary:
    """Summarise a multirun: print the table and write CSV, markdown and (2+ swept keys) the heatmap."""
    summary = summarize(sweep_dir, keys)
    out = Path(out) if out is not None else summary.sweep_dir
    print_table(summary, console)
    paths = write_files(summary, out)
    axes = _heatmap_axes(summary, heatmap_keys)
    if axes is not None and summary.rows:
        for key in axes:
            if key not in summary.keys:
                raise ConfigError("--heatmap", f"got {key!r}, not a grouping key; allowed: {summary.keys}")
        paths["heatmap.png"] = heatmap(summary, axes[0], axes[1], out / "heatmap.png")
    log.info("sweep summary written: %s", ", ".join(str(p) for p in paths.values()))
    return summary


# ---- Hydra callback -------------------------------------------------------------------------
class SummaryCallback(Callback):
    """Writes the sweep summary when a multirun ends; records why a job failed in its folder.

    Enable with `hydra.callbacks.summary._target_: zoexp.summarize.SummaryCallback`.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Record a failed sweep job in <sweep dir>/.failed/<job>.json (its own folder may be
        gone), then mark it handled so the sweeper goes on (Hydra's sweepers raise on the first
        failed job they see, which skips the remaining batches and this summary)."""
        mode = config.hydra.mode
        if job_return.status != JobStatus.FAILED or getattr(mode, "name", mode) != RunMode.MULTIRUN.name:
            return
        error = job_return._return_value
        lines = str(error).strip().splitlines()
        record = {"overrides": list(job_return.overrides or []),
                  "error": f"{type(error).__name__}: {lines[-1] if lines else ''}"}
        folder = Path(config.hydra.sweep.dir) / FAILED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{Path(config.hydra.runtime.output_dir).name}.json").write_text(json.dumps(record) + "\n")
        job_return.status, job_return._return_value = JobStatus.COMPLETED, None  # recorded, not raised

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            summary = report(sweep_dir)
        except Exception as exc:  # noqa: BLE001 - a summary must never turn a finished sweep into a crash
            log.warning("could not summarise %s: %s", sweep_dir, exc)
            failed = list((sweep_dir / FAILED_DIR).glob("*.json"))
            if failed:
                print(f"error: sweep: {len(failed)} job(s) failed; see {sweep_dir / FAILED_DIR}", file=sys.stderr)
                sys.exit(1)
            return
        if summary.failed:
            print(f"error: sweep: {len(summary.failed)} of {len(summary.jobs)} jobs failed "
                  f"({', '.join(j.name for j in summary.failed)}); see {sweep_dir / 'summary.md'}", file=sys.stderr)
            sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoexp.summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (multirun/<date>/<time>)")
    parser.add_argument("--keys", nargs="+", help="group by these config keys (default: the swept ones)")
    parser.add_argument("--heatmap", nargs=2, metavar=("X", "Y"), help="heatmap axes (default: first two swept keys)")
    parser.add_argument("--out", type=Path, help="where to write the files (default: the multirun dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = report(args.sweep_dir, args.keys, args.out, args.heatmap)
    except (OSError, ValueError) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if not summary.rows else 0


if __name__ == "__main__":
    sys.exit(main())
