"""bench.lora's tuning: the exact merge's server optimizer is chosen on the tuning seeds
alone, per family, and only the choice runs on the report seeds."""

from __future__ import annotations

import math

import pytest

from bench.lora_tuning import FIXED, Setting, report_settings, tune, tuning_grid

TUNING, REPORT = (100, 101), (0, 1, 2)


def fake_finals(good_on_tuning: dict[str, float]):
    """A setting's final perplexity: its value from ``good_on_tuning`` on a tuning seed
    (50 otherwise); on any other seed the order is reversed, so a choice made from the
    report seeds would differ."""
    calls: list[tuple[str, int]] = []

    def final_of(setting: Setting, seed: int) -> float:
        calls.append((setting.label, seed))
        value = good_on_tuning.get(setting.label, 50.0) + 0.01 * seed
        return value if seed in TUNING else 100.0 - value

    return final_of, calls


def test_choice_is_made_on_the_tuning_seeds_per_family() -> None:
    grid = tuning_grid()
    sgd2 = next(s for s in grid if s.label == "ours exact (SGD lr 2)")
    adam = next(s for s in grid if s.family == "adam" and "lr 0.01," in s.label)
    final_of, calls = fake_finals({sgd2.label: 40.0, adam.label: 45.0})
    tuned = tune(grid, TUNING, final_of)
    assert {seed for _, seed in calls} == set(TUNING)  # no report seed is run to tune
    assert len(calls) == len(grid) * len(TUNING)
    assert tuned.chosen == [sgd2, adam]  # best first, one per family
    assert tuned.score(sgd2.label) == pytest.approx(41.005)  # 40 + 0.01 x the mean tuning seed
    settings = report_settings(tuned)
    assert settings[: len(FIXED)] == list(FIXED) and settings[len(FIXED):] == [sgd2, adam]


def test_a_diverged_setting_is_never_chosen_and_fixed_ones_are_not_run_twice() -> None:
    sgd1 = Setting("ours exact (SGD lr 1)", "exact", {"optimizer": "sgd", "server-lr": 1.0})
    wild = Setting("ours exact (SGD lr 3)", "exact", {"optimizer": "sgd", "server-lr": 3.0})
    adam = Setting("ours exact (Adam lr 0.01, beta1 0.9)", "exact",
                   {"optimizer": "adam", "server-lr": 0.01, "beta1": 0.9})

    def final_of(setting: Setting, seed: int) -> float:
        return {wild.label: math.nan, sgd1.label: 30.0}.get(setting.label, 35.0)

    tuned = tune([wild, sgd1, adam], TUNING, final_of)
    assert tuned.chosen == [sgd1, adam]
    assert tuned.finals[wild.label] == [math.inf, math.inf]
    labels = [s.label for s in report_settings(tuned)]
    assert labels.count(sgd1.label) == 1 and labels[-1] == adam.label


def test_tuning_needs_settings_and_seeds() -> None:
    with pytest.raises(ValueError, match="at least one setting"):
        tune([], TUNING, lambda s, seed: 1.0)
