"""Random data directories (npz files of any arrays, .npy or junk bytes named .npz,
truncated zips, CSV text of any shape) through the worker's data-dir reader: the data
loads and fits the model, or LocalDataError names the file; nothing else is raised."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from client.local_data import LocalDataError, check_data_dir

dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int8, np.uint8,
                          np.bool_, np.complex64, np.dtype("<U2")])
shapes = st.one_of(st.sampled_from([(5, 64), (1, 64), (0, 64), (5,), (5, 8, 8), (), (4, 63)]),
                   hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))


@st.composite
def arrays(draw) -> np.ndarray:
    dtype, shape = draw(dtypes), draw(shapes)
    if np.dtype(dtype).kind == "f" and draw(st.booleans()):  # mostly in [0, 1], like data
        return draw(hnp.arrays(dtype, shape, elements=st.floats(0, 1, width=16)))
    return draw(hnp.arrays(dtype, shape))


def _npz(members: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **members)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _zip_garbage(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", data)
        z.writestr("y.npy", data)
    return buf.getvalue()


csv_cells = st.one_of(st.sampled_from(["0", "1", "0.5", "nan", "inf", "-1", "9", "16", "x", ""]),
                      st.floats(allow_nan=True).map(str))
csv_text = st.lists(st.lists(csv_cells, min_size=0, max_size=66).map(",".join), max_size=6) \
    .map("\n".join)
npz_bytes = st.one_of(
    st.dictionaries(st.sampled_from(["x", "y", "z"]), arrays(), max_size=3).map(_npz),
    arrays().map(_npy),
    st.binary(max_size=64),
    st.binary(max_size=64).map(b"PK\x03\x04".__add__),
    st.binary(max_size=40).map(_zip_garbage),
    st.binary(max_size=60).map(lambda b: _npz({"x": np.zeros((3, 64), np.float32)})[:20] + b),
)
files = st.one_of(
    st.tuples(st.just("train.npz"), npz_bytes),
    st.tuples(st.just("train.csv"), st.one_of(csv_text.map(str.encode), st.binary(max_size=40))),
)
extra = st.one_of(st.none(), st.tuples(st.just("val.npz"), npz_bytes),
                  st.tuples(st.just("val.csv"), csv_text.map(str.encode)))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(train=st.one_of(st.none(), files), val=extra)
def test_data_loads_or_the_error_names_the_file(train, val) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for item in (train, val):
            if item is not None:
                (directory / item[0]).write_bytes(item[1])
        try:
            data = check_data_dir(directory)
        except LocalDataError as exc:
            assert str(directory) in str(exc), str(exc)
            return
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1:] == (64,)
    assert data.y_train.dtype == np.int64 and len(data.y_train) == len(data.x_train) > 0
    assert ((data.y_train >= 0) & (data.y_train < 10)).all()
    assert np.isfinite(data.x_train).all() and len(data.x_val) > 0



def test_what_the_fuzzer_found_names_the_file(tmp_path: Path) -> None:
    for data, words in [(b"", "not a readable .npz"), (_npy(np.zeros((2, 64))), "one .npy array"),
                        (b"PK\x03\x04garbage", "not a readable .npz"),
                        (_zip_garbage(b"\x93NUMPY junk"), "not a readable .npz"),
                        (_zip_garbage(b""), "must be .npy arrays")]:
        (tmp_path / "train.npz").write_bytes(data)
        try:
            check_data_dir(tmp_path)
        except LocalDataError as exc:
            assert str(tmp_path / "train.npz") in str(exc) and words in str(exc), str(exc)
        else:
            raise AssertionError(f"{data[:10]!r} was read")
