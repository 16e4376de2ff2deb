"""``client/local_data.py``: a worker's own files, and the errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.data import digits_split
from client.datasets import load_client_data
from client.local_data import (
    LocalDataError,
    check_data_dir,
    data_dir_partition_id,
    load_local_data,
    write_local_data,
)
from client.task import ClientTask

TASK = ClientTask(task="digits")


def _digits(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    x, y, _, _ = digits_split()
    return x[:n], y[:n]


def test_npz_round_trip_through_the_loader_registry(tmp_path: Path) -> None:
    x, y = _digits(100)
    write_local_data(tmp_path, x, y)
    pid, data = load_client_data(TASK, {"data-dir": str(tmp_path), "partition-id": 7})
    assert pid == 7
    assert (len(data.y_train), len(data.y_val)) == (80, 20)  # 20% held out
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    merged = np.concatenate([data.y_train, data.y_val])
    assert sorted(merged.tolist()) == sorted(y.tolist())


def test_val_file_is_used_and_the_id_is_stable_without_partition_id(tmp_path: Path) -> None:
    x, y = _digits(60)
    write_local_data(tmp_path, x[:50], y[:50], x_val=x[50:], y_val=y[50:])
    pid, data = load_local_data(TASK, {"data-dir": str(tmp_path)})
    assert (len(data.y_train), len(data.y_val)) == (50, 10)
    assert pid == data_dir_partition_id(tmp_path.resolve()) < 2**28


def test_csv_with_a_header(tmp_path: Path) -> None:
    x, y = _digits(30)
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    np.savetxt(tmp_path / "train.csv", np.column_stack([x, y]), delimiter=",", header=header,
               comments="", fmt="%.6g")
    data = check_data_dir(tmp_path)
    assert len(data.y_train) + len(data.y_val) == 30
    np.testing.assert_allclose(np.sort(data.x_train.sum(1)), np.sort(data.x_train.sum(1)))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((5, 63), np.float32), np.zeros(5, np.int64), r"shape \(5, 63\).*\(n, 64\)"),
        (np.zeros((5, 8, 8), np.float32), np.zeros(5, np.int64), "flatten 8x8"),
        (np.full((5, 64), 16, np.int64), np.zeros(5, np.int64), "divide by 16"),
        (np.full((5, 64), 2.0, np.float32), np.zeros(5, np.int64), r"span \[2, 2\].*\[0, 1\]"),
        (np.zeros((5, 64), np.float32), np.array([0, 1, 2, 10, 11]), r"labels \[10, 11\]"),
        (np.zeros((5, 64), np.float32), np.zeros(5, np.float32), "y has dtype float32"),
        (np.zeros((5, 64), np.float32), np.zeros(4, np.int64), r"y has shape \(4,\)"),
        (np.full((5, 64), np.nan, np.float32), np.zeros(5, np.int64), "NaN"),
    ],
)
def test_mismatches_name_the_file_and_the_problem(
    tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str
) -> None:
    np.savez(tmp_path / "train.npz", x=x, y=y)
    with pytest.raises(LocalDataError, match=message) as err:
        check_data_dir(tmp_path)
    assert str(tmp_path / "train.npz") in str(err.value)


def test_missing_files_and_arrays(tmp_path: Path) -> None:
    with pytest.raises(LocalDataError, match="no train.npz or train.csv"):
        check_data_dir(tmp_path)
    np.savez(tmp_path / "train.npz", features=np.zeros((3, 64)))
    with pytest.raises(LocalDataError, match="no array 'x' or 'y'"):
        check_data_dir(tmp_path)
    with pytest.raises(LocalDataError, match="not a directory"):
        check_data_dir(tmp_path / "nope")


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    x, y = _digits(40)
    write_local_data(tmp_path, x[:20], y[:20])
    assert len(check_data_dir(tmp_path).y_train) == 16
    write_local_data(tmp_path, x, y)
    assert len(check_data_dir(tmp_path).y_train) == 32
