"""logger=wandb in offline mode: the run written to disk, read back through wandb's own records."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write

from zoexp.tracking import Tracker
from zoexp.wandb_logger import RUN_ID_FILE, WandbLogger, flatten, sweep_group

CONF = str(Path(__file__).resolve().parents[1] / "conf")
BLOCK = 32768  # wandb's .wandb file: a LevelDB-style log of protobuf Records in 32 KiB blocks


def read_records(path: Path) -> list:
    """Parse a `run-<id>.wandb` file into wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    records, pos, chunk = [], 7, b""
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def complete_records(path: Path, timeout: float = 60.0) -> list:
    """The records once the run's exit record is on disk: wandb-core writes the file
    asynchronously, and after finish() of a second run in one process it may still be empty."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = read_records(path)
        except Exception:  # noqa: BLE001 - a record still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def offline_run(run_dir: Path) -> dict:
    """{'id', 'group', 'name', 'job_type', 'config', 'history', 'summary', 'metrics', 'exit'} of one run."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    out = {"config": {}, "history": [], "summary": {}, "metrics": {}, "exit": None}
    for record in complete_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, group=run.run_group, name=run.display_name, job_type=run.job_type)
            out["config"].update({u.key: json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            out["history"].append({k: v for k, v in row.items() if not k.startswith("_")})
        elif kind == "summary":
            out["summary"].update({"/".join(u.nested_key) or u.key: json.loads(u.value_json)
                                   for u in record.summary.update})
        elif kind == "metric":
            metric = record.metric
            out["metrics"][metric.name or metric.glob_name] = metric.step_metric
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory) -> None:
    home = tmp_path_factory.mktemp("wandb-home")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def job_cfg(tmp_path: Path):
    """The real composed config with logger=wandb, as job 1 of a multirun sees it."""
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("config", overrides=["logger=wandb", "solver.lr=0.001", "hardware=cpu"],
                      return_hydra_config=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.sweep.dir = str(tmp_path / "multirun" / "2026-01-02" / "03-04-05")
        cfg.hydra.job.override_dirname = "solver.lr=0.001"
    HydraConfig.instance().set_config(cfg)
    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # what run_job hands the task
    yield task_cfg
    HydraConfig.instance().cfg = None


def test_flatten() -> None:
    assert flatten({"solver": {"n_perts": 40, "lr": 1e-4}, "tags": ["a", "b"], "empty": {}}) == \
        {"solver.n_perts": 40, "solver.lr": 1e-4, "tags.0": "a", "tags.1": "b", "empty": {}}
    assert sweep_group("multirun/2026-01-02/03-04-05") == "2026-01-02/03-04-05"


def test_offline_run_holds_flat_config_and_metrics(job_cfg, tmp_path: Path) -> None:
    run_dir = tmp_path / "multirun" / "2026-01-02" / "03-04-05" / "1"
    logger = hydra.utils.instantiate(job_cfg.logger, cfg=job_cfg, run_dir=str(run_dir))  # as zoexp.run does
    tracker = Tracker(run_dir, wandb_logger=logger)
    try:
        for step in (1, 2, 3):
            tracker.log({"train_loss": 1.0 / step, "fwd_passes": 2 * step}, step)
        tracker.log({"dev_accuracy": 0.75, "fwd_passes": 6}, 3)
        tracker.summary({"metric": "accuracy", "best_dev_accuracy": 0.75, "steps": 3})
    finally:
        tracker.finish()

    run = offline_run(run_dir)
    assert run["id"] == (run_dir / RUN_ID_FILE).read_text().strip()
    assert run["group"] == "2026-01-02/03-04-05"
    assert run["name"] == "solver.lr=0.001" and run["job_type"] == "train"
    config = run["config"]
    assert config["solver.lr"] == 0.001
    assert config["solver.seed"] == job_cfg.hardware.seed  # resolved, not "${hardware.seed}"
    assert config["task.num_train"] == job_cfg.task.num_train
    assert config["choice.solver"] == "mezo" and config["choice.logger"] == "wandb"
    assert not any(isinstance(v, dict) and v for v in config.values())  # flat
    assert [(h["step"], h["fwd_passes"], h.get("train_loss")) for h in run["history"]] == \
        [(1, 2, 1.0), (2, 4, 0.5), (3, 6, 1 / 3), (3, 6, None)]
    assert run["history"][-1]["dev_accuracy"] == 0.75
    assert run["summary"]["best_dev_accuracy"] == 0.75 and run["summary"]["steps"] == 3
    assert run["metrics"]["*"] == "step" and {"step", "fwd_passes"} <= set(run["metrics"])
    assert run["exit"] == 0


def test_restarted_job_keeps_its_run_and_jobs_in_one_process_get_their_own(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"solver": {"n_perts": 4}})
    first, other = tmp_path / "0", tmp_path / "1"
    for attempt in range(2):  # a job, then the same job requeued: one W&B run id
        logger = WandbLogger(cfg, first, name="job0")
        logger.log({"train_loss": float(attempt)}, step=attempt)
        logger.finish()
        logger.finish()  # idempotent
    logger = WandbLogger(cfg, other, name="job1")  # next job in the same process: a new run
    logger.finish()
    ids = {p.stem.split("-", 1)[1] for p in (first / "wandb").glob("offline-run-*/run-*.wandb")}
    assert ids == {(first / RUN_ID_FILE).read_text().strip()}
    assert len(list((first / "wandb").glob("offline-run-*"))) == 2
    assert offline_run(other)["id"] != ids.pop()
