"""The Task interface: where examples come from, how they become prompts, how they are scored.

A task knows nothing about models. It loads raw rows from local files when `data_dir` is set
or `<data_root>/<task name>` exists (offline cluster nodes), else from the Hugging Face hub
through `datasets`. It samples them with MeZO's protocol (num_train / num_dev from the train
split, num_eval from the split that has labels) and renders each row into an `Example`: a
prompt plus the candidate continuations the model scores. Objectives and the loop consume `Example`s only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

from zoexp.errors import ConfigError

LOCAL_SUFFIXES = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# File stems accepted for each logical split of a local copy (GLUE ships dev.tsv, the hub says validation).
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "dev", "val"), "test": ("test",)}


@dataclass(frozen=True)
class Example:
    """One rendered example.

    `prompt` ends exactly where the answer starts; each candidate carries its own leading
    space (" great"), so prompt + candidate is the text the model scores. `label` indexes the
    gold candidate (classification / multiple choice). Generation tasks put the gold strings
    in `answers` and may leave `candidates` empty.
    """

    prompt: str
    candidates: tuple[str, ...]
    label: int | None = None
    answers: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Task:
    """Base class: subclass, set the class attributes, implement `render`.

    kind: "classification" (fixed label words), "multiple_choice" (per-example candidates,
    scored by their LM log-likelihood) or "generation" (free text, scored by F1 / EM).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "classification"
    metric: ClassVar[str] = "accuracy"
    hub_path: ClassVar[tuple[str, ...]] = ()          # args to datasets.load_dataset
    required_columns: ClassVar[tuple[str, ...]] = ()
    label_column: ClassVar[str | None] = "label"
    num_labels: ClassVar[int | None] = None           # labels must lie in range(num_labels)
    train_split: ClassVar[str] = "train"
    eval_split: ClassVar[str] = "validation"          # test labels are hidden for GLUE/SuperGLUE

    def __init__(
        self,
        data_dir: str | None = None,
        data_root: str | None = None,
        num_train: int = 1000,
        num_dev: int = 500,
        num_eval: int = 1000,
        k_shot: int | None = None,
        seed: int = 0,
    ) -> None:
        for key, value in (("num_train", num_train), ("num_dev", num_dev), ("num_eval", num_eval)):
            if not isinstance(value, int) or value < 0 or (key != "num_dev" and value == 0):
                allowed = ">= 0" if key == "num_dev" else ">= 1"
                raise ConfigError(f"task.{key}", f"got {value!r}; allowed: an integer {allowed}")
        if k_shot is not None and (not isinstance(k_shot, int) or k_shot < 1):
            raise ConfigError("task.k_shot", f"got {k_shot!r}; allowed: null or an integer >= 1")
        if k_shot is not None and self.label_column is None:
            raise ConfigError("task.k_shot", f"got {k_shot}; {self.name} has no label column to sample "
                              f"per class; allowed: null")
        if data_dir is None and data_root and (Path(data_root) / self.name).is_dir():
            data_dir = str(Path(data_root) / self.name)  # a local copy wins over the hub
        if data_dir is not None and not Path(data_dir).is_dir():
            raise ConfigError("task.data_dir", f"no such directory {data_dir!r}; allowed: a folder "
                              f"holding {self.train_split}/{self.eval_split} files "
                              f"({', '.join(sorted(LOCAL_SUFFIXES))}) or null for the hub")
        self.data_dir = data_dir
        self.num_train, self.num_dev, self.num_eval = num_train, num_dev, num_eval
        self.k_shot = k_shot
        self.seed = seed

    # ---- to implement -------------------------------------------------------------------
    def render(self, row: dict) -> Example:
        """Turn one raw row into an Example (prompt template + verbalizer)."""
        raise NotImplementedError

    # ---- shared machinery -----------------------------------------------------------------
    def score(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        """Default metric: accuracy of predicted candidate indices."""
        correct = sum(int(p == ex.label) for p, ex in zip(predictions, examples))
        return {"accuracy": correct / max(len(examples), 1)}

    def load_rows(self, split: str) -> list[dict]:
        """Raw rows of a split, from `data_dir` when set, else from the hub via `datasets`."""
        import datasets

        datasets.disable_progress_bars()  # one line per split is noise in a sweep's logs
        if self.data_dir is not None:
            ds = self._load_local(self._local_file(split))
        else:
            try:
                ds = datasets.load_dataset(*self.hub_path, split=split)
            except (ConnectionError, OSError, ValueError) as exc:  # offline node, unknown name
                raise ConfigError("task.data_dir", f"cannot load {'/'.join(self.hub_path)} ({split}) from the "
                                  f"hub: {str(exc).strip().splitlines()[0]}; allowed: a reachable hub, "
                                  f"task.data_dir=<folder> or <data_root>/{self.name}/") from None
        missing = [c for c in self.required_columns if c not in ds.column_names]
        if missing:
            raise ConfigError("task.data_dir" if self.data_dir else "task",
                              f"{self.name} {split} data lacks column(s) {missing}; "
                              f"required columns: {list(self.required_columns)}")
        rows = ds.to_list()
        self._check_present(rows, split)
        self._check_labels(rows, split)
        return rows

    def _load_local(self, path: Path):
        """A local file through `datasets`, its parse errors turned into one line naming the file."""
        import datasets

        field = "task.data_dir"
        fmt = path.suffix.lstrip(".").upper()
        allowed = (f"allowed: a well-formed UTF-8 {fmt} file with {'a header row naming the columns and ' if fmt in ('CSV', 'TSV') else ''}"
                   f"one example per {'row' if fmt != 'JSON' else 'object'}")
        if path.stat().st_size == 0:
            raise ConfigError(field, f"{path} is empty (0 bytes); {allowed}")
        kwargs = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own error lines would double ours
        try:
            ds = datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train", **kwargs)
        except Exception as exc:  # noqa: BLE001 - pandas / arrow / unicode errors, wrapped by datasets
            if "corresponds to no data" in str(exc):
                raise ConfigError(field, f"{path} has no rows (a header only?); {allowed}") from None
            raise ConfigError(field, f"cannot read {path} ({_root_cause(exc)}); {allowed}") from None
        finally:
            datasets.logging.set_verbosity(verbosity)
        if len(ds) == 0:
            raise ConfigError(field, f"{path} has no rows; {allowed}")
        return ds

    def _check_present(self, rows: list[dict], split: str) -> None:
        """A required column left empty (null in JSON, a missing or empty CSV field) is named
        here rather than failing later inside a prompt template."""
        if self.data_dir is None:
            return  # hub datasets are what they are; this guards hand-made local files
        columns = list(self.required_columns)
        for number, row in enumerate(rows, start=1):
            for column in columns:
                value = row.get(column)
                if value is None or (isinstance(value, float) and value != value):
                    raise ConfigError("task.data_dir", f"{self._local_file(split)} row {number}: column "
                                      f"'{column}' is empty (null); allowed: a value in every row of "
                                      f"columns {columns}")

    def _local_file(self, split: str) -> Path:
        root = Path(self.data_dir)
        for stem in SPLIT_STEMS.get(split, (split,)):
            for suffix in LOCAL_SUFFIXES:
                if (root / f"{stem}{suffix}").is_file():
                    return root / f"{stem}{suffix}"
        names = [f"{s}{x}" for s in SPLIT_STEMS.get(split, (split,)) for x in LOCAL_SUFFIXES]
        raise ConfigError("task.data_dir", f"no {split} file in {self.data_dir!r}; allowed names: {names}")

    def _check_labels(self, rows: list[dict], split: str) -> None:
        if self.label_column is None or self.num_labels is None:
            return
        bad = {r[self.label_column] for r in rows} - set(range(self.num_labels))
        if bad:
            raise ConfigError(f"task ({self.name} column '{self.label_column}')",
                              f"unknown label(s) {sorted(bad, key=str)[:5]} in {split}; "
                              f"allowed: {list(range(self.num_labels))}")

    def sample(self) -> dict[str, list[Example]]:
        """MeZO protocol: train and dev drawn (disjointly) from the train split, test from eval.

        With `k_shot` set, train is k examples per class and dev another k per class
        (the RoBERTa-style few-shot setting).
        """
        rng = random.Random(self.seed)
        train_rows = self.load_rows(self.train_split)
        eval_rows = self.load_rows(self.eval_split)
        if self.k_shot is not None and self.label_column is not None:
            train, dev = self._k_shot_split(train_rows, rng)
        else:
            need = self.num_train + self.num_dev
            if need > len(train_rows):
                raise ConfigError("task.num_train", f"num_train + num_dev = {need} exceeds the "
                                  f"{len(train_rows)} rows of {self.name}/{self.train_split}; "
                                  f"allowed: at most {len(train_rows)} together")
            picked = rng.sample(range(len(train_rows)), need)
            train = [train_rows[i] for i in picked[: self.num_train]]
            dev = [train_rows[i] for i in picked[self.num_train:]]
        n_eval = min(self.num_eval, len(eval_rows))
        test = [eval_rows[i] for i in sorted(rng.sample(range(len(eval_rows)), n_eval))]
        return {name: [self.render(r) for r in rows]
                for name, rows in (("train", train), ("dev", dev), ("test", test))}

    def _k_shot_split(self, rows: list[dict], rng: random.Random) -> tuple[list[dict], list[dict]]:
        by_label: dict = {}
        for r in rows:
            by_label.setdefault(r[self.label_column], []).append(r)
        train, dev = [], []
        for label in sorted(by_label, key=str):
            group = by_label[label]
            if len(group) < 2 * self.k_shot:
                raise ConfigError("task.k_shot", f"label {label} has {len(group)} rows, fewer than "
                                  f"2 * k_shot = {2 * self.k_shot}; allowed: k_shot <= {len(group) // 2}")
            picked = rng.sample(group, 2 * self.k_shot)
            train += picked[: self.k_shot]
            dev += picked[self.k_shot:]
        rng.shuffle(train)
        return train, dev


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost useful exception (datasets wraps the parser's)."""
    chain = []
    while exc is not None and len(chain) < 8:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    inner = next((e for e in chain[1:] if str(e).strip()), chain[0])
    first = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    return f"{type(inner).__name__}: {first.replace('Error tokenizing data. ', '')}"
