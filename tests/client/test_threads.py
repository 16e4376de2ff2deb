"""Node config ``threads``: a small model trains on one torch thread, a setting wins, and
the process's own count comes back after the task."""

from __future__ import annotations

import pytest
import torch

from client.threads import SMALL_MODEL, ThreadsError, task_threads, threads_of


def _model(params: int) -> torch.nn.Module:
    return torch.nn.Linear(params, 1, bias=False)


def test_a_small_model_runs_on_one_thread_a_large_one_on_the_process_count() -> None:
    assert threads_of({}, _model(1000)) == 1
    assert threads_of({"threads": 0}, _model(SMALL_MODEL - 1)) == 1
    assert threads_of({}, _model(SMALL_MODEL)) == torch.get_num_threads()


def test_the_node_setting_wins_and_is_restored_after_the_task() -> None:
    before = torch.get_num_threads()
    target = 1 if before > 1 else 2
    with task_threads({"threads": str(target)}, _model(SMALL_MODEL)) as threads:
        assert threads == target == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), task_threads({}, _model(10)):
        raise RuntimeError("the task failed")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("raw", [-1, "two", 1.5, True, "-3"])
def test_a_bad_setting_names_the_key(raw: object) -> None:
    with pytest.raises(ThreadsError, match="node config threads"):
        threads_of({"threads": raw}, _model(10))
