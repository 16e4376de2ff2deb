"""The example's own data set, generated (seeded, so the same on every machine): 3,000
rows of 8 numeric features and a 3-class label, as a table with named columns. Simulated
nodes get partitions of its first 80%; the last 20% is the coordinator's held-out set.
``python -m fedmerge_example_tabular.synthetic DIR --workers 2`` writes it as CSV files,
one folder per worker, for the deployment engine."""

from __future__ import annotations

import argparse
import csv
from functools import lru_cache
from pathlib import Path

import numpy as np
from sklearn.datasets import make_classification

FEATURES = ("age", "income", "tenure", "visits", "spend", "returns", "rating", "distance")
LABEL = "segment"
CLASSES = ("bronze", "silver", "gold")
ROWS, HELD_OUT = 3000, 0.2


@lru_cache(maxsize=1)
def table() -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 8) float32, standardised; class indices (n,) int64)."""
    x, y = make_classification(
        n_samples=ROWS, n_features=len(FEATURES), n_informative=5, n_redundant=1,
        n_classes=len(CLASSES), n_clusters_per_class=2, class_sep=1.0, random_state=7,
    )
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32), y.astype(np.int64)


def pool() -> tuple[np.ndarray, np.ndarray]:
    x, y = table()
    cut = int(ROWS * (1 - HELD_OUT))
    return x[:cut], y[:cut]


def held_out() -> tuple[np.ndarray, np.ndarray]:
    x, y = table()
    cut = int(ROWS * (1 - HELD_OUT))
    return x[cut:], y[cut:]


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*FEATURES, LABEL])
        for row, label in zip(x, y, strict=True):
            out.writerow([*(f"{v:.6g}" for v in row), CLASSES[label]])


def write_workers(directory: Path, workers: int) -> list[Path]:
    """``directory``/worker-<i>/train.csv: the pool split in ``workers`` contiguous parts."""
    x, y = pool()
    folders = []
    for i, rows in enumerate(np.array_split(np.arange(len(y)), workers)):
        folder = directory / f"worker-{i}"
        write_csv(folder / "train.csv", x[rows], y[rows])
        folders.append(folder)
    xh, yh = held_out()
    write_csv(directory / "held-out.csv", xh, yh)
    return folders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("directory", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    for folder in write_workers(args.directory, args.workers):
        print(folder / "train.csv")


if __name__ == "__main__":
    main()
