"""``TabularTask``: a small MLP that classifies the rows of a table.

Each worker's ``data-dir`` holds ``train.csv`` (and optionally ``val.csv``; without it
20% of train.csv is held out for local validation): a header line naming the columns,
then one row per example. The task settings name the feature columns, the label column
and the classes; other columns are ignored. Simulated nodes get a partition (by the run's
scheme) of the example's generated table (synthetic.py).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from client.data import partition_rows
from client.tasks import Arrays, DataError, PartitionRequest, Splits, Task
from fedmerge_example_tabular import synthetic

VAL_FRACTION = 0.2


class TabularSettings(BaseModel):
    """``task-config`` of the task, e.g. '{label="segment", hidden=32}'."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    features: list[str] = Field(default_factory=lambda: list(synthetic.FEATURES), min_length=1)
    label: str = synthetic.LABEL
    classes: list[str] = Field(default_factory=lambda: list(synthetic.CLASSES), min_length=2)
    hidden: int = Field(32, ge=1)
    central_csv: str = Field("", alias="central-csv")  # the coordinator's held-out CSV

    @model_validator(mode="after")
    def _distinct(self) -> TabularSettings:
        if self.label in self.features:
            raise ValueError(f"label column {self.label!r} is also a feature")
        for name in ("features", "classes"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has duplicates: {values}")
        return self


class TabularMLP(nn.Module):
    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(x)))  # (B, F) -> (B, C)


class TabularTask(Task):
    Settings = TabularSettings
    settings: TabularSettings
    headline = "accuracy"
    higher_is_better = True

    def build_model(self) -> nn.Module:
        s = self.settings
        return TabularMLP(len(s.features), s.hidden, len(s.classes))

    def partition(self, request: PartitionRequest) -> Splits:
        x, y = synthetic.pool()
        self._fits_generated_table()
        rows = partition_rows(y, request)
        rows = np.random.default_rng([request.seed, request.partition_id]).permutation(rows)
        n_val = max(1, int(len(rows) * VAL_FRACTION))
        return Splits(Arrays(x[rows[n_val:]], y[rows[n_val:]]),
                      Arrays(x[rows[:n_val]], y[rows[:n_val]]))

    def read_data_dir(self, directory: Path, seed: int) -> Splits:
        train = self.read_csv(directory / "train.csv")
        if (directory / "val.csv").is_file():
            return Splits(train, self.read_csv(directory / "val.csv"))
        if len(train) < 2:
            raise DataError(f"task {self.ref}: {directory / 'train.csv'}: {len(train)} row(s); "
                            "need 2 or more without val.csv")
        idx = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, int(len(train) * VAL_FRACTION))
        val, rest = idx[:n_val], idx[n_val:]
        return Splits(Arrays(train.x[rest], train.y[rest]), Arrays(train.x[val], train.y[val]))

    def central_data(self) -> Arrays:
        if self.settings.central_csv:
            return self.read_csv(Path(self.settings.central_csv).expanduser())
        self._fits_generated_table()
        return Arrays(*synthetic.held_out())

    # --- reading a CSV against the settings --------------------------------------------
    def read_csv(self, path: Path) -> Arrays:
        """The named columns of ``path``: features as float32, the label as class index."""
        s = self.settings
        if not path.is_file():
            raise DataError(f"task {self.ref}: {path}: no such file")
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"task {self.ref}: {path}: empty file (expected a header line)")
            header = [h.strip() for h in header]
            missing = [c for c in (*s.features, s.label) if c not in header]
            if missing:
                raise DataError(f"task {self.ref}: {path}: no column(s) {missing} (the header "
                                f"has {header}; task-config names features and label)")
            cols = [header.index(c) for c in s.features]
            at_label = header.index(s.label)
            classes = {c: i for i, c in enumerate(s.classes)}
            xs, ys = [], []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                label = row[at_label].strip()
                if label not in classes:
                    raise DataError(f"task {self.ref}: {path} line {line}: label {label!r} in "
                                    f"column {s.label!r} is not one of the classes {s.classes}")
                try:
                    values = [float(row[c]) for c in cols]
                except (ValueError, IndexError):
                    raise DataError(f"task {self.ref}: {path} line {line}: a feature is missing "
                                    "or not a number") from None
                if not all(math.isfinite(v) for v in values):
                    raise DataError(f"task {self.ref}: {path} line {line}: NaN or infinite value")
                xs.append(values)
                ys.append(classes[label])
        if not ys:
            raise DataError(f"task {self.ref}: {path}: no rows after the header")
        return Arrays(np.asarray(xs, np.float32), np.asarray(ys, np.int64))

    def _fits_generated_table(self) -> None:
        s = self.settings
        if (tuple(s.features), s.label, tuple(s.classes)) != (
                synthetic.FEATURES, synthetic.LABEL, synthetic.CLASSES):
            raise DataError(f"task {self.ref}: simulated partitions and the default held-out "
                            "set come from the generated table, whose columns are the default "
                            "features/label/classes; give nodes a data-dir (and central-csv)")
