"""A worker's own data, read from the directory its node config names (``data-dir``), for
a task whose data are feature arrays (the built-in ``digits`` task reads it with its
``DIGITS_FORMAT``; another task passes its own ``DataSpec`` to ``read_arrays_dir``).

On-disk format (``digits``: the MLP/CNN take 8x8 images):

    <data-dir>/train.npz   x: float (n, 64), values in [0, 1]   y: integer (n,), 0..9
    <data-dir>/val.npz     optional, same arrays; without it the last 20% of a seeded
                           shuffle of train.npz is held out for local validation
or, instead of the .npz files, ``train.csv`` (and optionally ``val.csv``): one example
per line, 64 feature values then the label, comma-separated; a header line is allowed.

Floats are cast to float32 and integers to int64. Anything else (wrong shape, a feature
count the model does not take, values outside the range, labels outside 0..9, NaN, too
few examples) is a ``LocalDataError`` that names the file and the mismatch.

The node's ``partition-id`` (it labels the worker's rows in the run store) comes from the
node config when given, else a stable number derived from the host name and the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from client.data import ClientData
from client.task import ClientTask
from client.tasks.api import DataError
from client.tasks.registry import load_task
from client.tasks.runtime import DATA_DIR_KEY, RunPartition, node_data
from client.tasks.runtime import data_dir_partition_id as data_dir_partition_id

VAL_FRACTION = 0.2


LocalDataError = DataError  # the worker's data does not fit the model: names file and field


@dataclass(frozen=True)
class DataSpec:
    features: int
    num_classes: int
    low: float = 0.0
    high: float = 1.0


DIGITS_FORMAT = DataSpec(features=64, num_classes=10)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".npz":
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise LocalDataError(f"{path}: one .npy array, not an .npz archive of 'x' and 'y'")
            with z:
                missing = [k for k in ("x", "y") if k not in z.files]
                if missing:
                    raise LocalDataError(
                        f"{path}: no array {' or '.join(map(repr, missing))} "
                        f"(it holds {sorted(z.files)}; expected 'x' and 'y')"
                    )
                x, y = z["x"], z["y"]  # a member that is not .npy comes back as bytes
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
                raise LocalDataError(f"{path}: 'x' and 'y' must be .npy arrays (np.savez)")
            return x, y
        except LocalDataError:
            raise
        except Exception as exc:  # noqa: BLE001 - any bytes at all: numpy's, zipfile's, zlib's
            raise LocalDataError(f"{path}: not a readable .npz file ({exc})") from None
    try:
        first = path.open().readline()
        skip = 1 if any(c.isalpha() for c in first) else 0  # a header line
        table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise LocalDataError(f"{path}: not a numeric CSV ({exc})") from None
    labels = table[:, -1]
    if not np.all(labels == np.round(labels)):
        raise LocalDataError(f"{path}: the last column (the label) holds non-integers")
    return table[:, :-1], labels.astype(np.int64)


def _check(path: Path, x: np.ndarray, y: np.ndarray, spec: DataSpec) -> tuple[np.ndarray, ...]:
    if not np.issubdtype(x.dtype, np.floating):
        hint = " (raw digits pixels are 0..16: divide by 16)" if np.issubdtype(
            x.dtype, np.integer) else ""
        raise LocalDataError(f"{path}: x has dtype {x.dtype}, expected float32{hint}")
    if not np.issubdtype(y.dtype, np.integer):
        raise LocalDataError(f"{path}: y has dtype {y.dtype}, expected an integer dtype")
    if x.ndim != 2 or x.shape[1] != spec.features:
        raise LocalDataError(
            f"{path}: x has shape {x.shape}, the model takes (n, {spec.features})"
            + (" (flatten 8x8 images to 64 values)" if x.shape[1:] == (8, 8) else "")
        )
    if y.ndim != 1 or len(y) != len(x):
        raise LocalDataError(f"{path}: y has shape {y.shape}, expected ({len(x)},) like x")
    if len(x) == 0:
        raise LocalDataError(f"{path}: no examples")
    if not np.all(np.isfinite(x)):
        raise LocalDataError(f"{path}: x holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < spec.low or hi > spec.high:
        raise LocalDataError(
            f"{path}: x values span [{lo:g}, {hi:g}], the model expects [{spec.low:g}, "
            f"{spec.high:g}]"
        )
    bad = y[(y < 0) | (y >= spec.num_classes)]
    if bad.size:
        raise LocalDataError(
            f"{path}: labels {sorted(set(bad.tolist()))[:5]} outside 0..{spec.num_classes - 1}"
        )
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def _find(directory: Path, stem: str) -> Path | None:
    for suffix in (".npz", ".csv"):
        if (path := directory / f"{stem}{suffix}").is_file():
            return path
    return None


@lru_cache(maxsize=4)
def _load(directory: Path, spec: DataSpec, seed: int, _stamp: tuple) -> ClientData:
    train_path = _find(directory, "train")
    if train_path is None:
        raise LocalDataError(f"{directory}: no train.npz or train.csv (see client/local_data.py)")
    x, y = _check(train_path, *_read(train_path), spec)
    val_path = _find(directory, "val")
    if val_path is not None:
        x_val, y_val = _check(val_path, *_read(val_path), spec)
        return ClientData(x, y, x_val, y_val)
    if len(x) < 2:
        raise LocalDataError(f"{train_path}: {len(x)} example(s); need 2 or more without val")
    idx = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(len(x) * VAL_FRACTION))
    return ClientData(x[idx[n_val:]], y[idx[n_val:]], x[idx[:n_val]], y[idx[:n_val]])


def _stamp(directory: Path) -> tuple:
    """Changes when a data file does, so the cache never serves stale data."""
    files = sorted(p for p in directory.iterdir() if p.stem in ("train", "val"))
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def read_arrays_dir(directory: Path, spec: DataSpec, seed: int) -> ClientData:
    """A task's ``read_data_dir`` for the format above (cached until a file changes)."""
    return _load(directory, spec, seed, _stamp(directory))


def load_local_data(task: ClientTask, node_config: Mapping[str, Any]) -> tuple[int, ClientData]:
    """(partition id, data) of a node whose config has ``data-dir``, read by the run's task."""
    return node_data(load_task(task.task, task.task_config), node_config,
                     RunPartition(seed=task.seed))


def check_data_dir(directory: Path, task: str = "digits", task_config: str = "") -> ClientData:
    """What a worker checks at start: its data loads and fits ``task``'s model."""
    _, data = load_local_data(ClientTask(task=task, task_config=task_config),
                              {DATA_DIR_KEY: str(directory)})
    return data


def write_local_data(directory: Path, x: np.ndarray, y: np.ndarray, *,
                     x_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> None:
    """Write ``train.npz`` (and ``val.npz``) in the format above."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "train.npz", x=x.astype(np.float32), y=y.astype(np.int64))
    if x_val is not None and y_val is not None:
        np.savez(directory / "val.npz", x=x_val.astype(np.float32), y=y_val.astype(np.int64))
