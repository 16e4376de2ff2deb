"""The fair tuning protocol (bench/tuning.py): the selection reads the tuning seeds'
runs only, every contender gets the same budget, a reported seed cannot be tuned on."""

from __future__ import annotations

import pytest

from bench.federated import Curve
from bench.tuning import (
    CLIENT_LRS,
    FAMILIES,
    Config,
    Family,
    ProtocolError,
    budget_configs,
    check_seeds,
    grid,
    select,
)

FAST = [0.1, 0.95, 0.95, 0.95]  # reaches 0.9 in round 1
SLOW = [0.1, 0.5, 0.7, 0.92]  # in round 3


def configs() -> list[Config]:
    return [Config("f", (("client lr", 0.1),)), Config("f", (("client lr", 0.2),))]


def test_select_reads_only_the_tuning_seeds() -> None:
    a, b = configs()
    runs = {(a.label, 100): Curve(a.label, SLOW), (b.label, 100): Curve(b.label, FAST)}
    # on the reported seed 0 the order is the other way round: it must not matter
    runs |= {(a.label, 0): Curve(a.label, FAST), (b.label, 0): Curve(b.label, SLOW)}
    best, scores = select([a, b], runs, [100], target=0.9, rounds=3)
    assert best == b
    assert scores[a].mean_rounds == 3 and scores[b].mean_rounds == 1
    best_on_reported, _ = select([a, b], runs, [0], target=0.9, rounds=3)
    assert best_on_reported == a  # the runs above do order the configurations


def test_select_averages_over_tuning_seeds_and_breaks_ties_by_the_tail() -> None:
    a, b = configs()
    never = [0.1, 0.5, 0.6, 0.7]
    runs = {(a.label, 1): Curve(a.label, FAST), (a.label, 2): Curve(a.label, never),
            (b.label, 1): Curve(b.label, SLOW), (b.label, 2): Curve(b.label, SLOW)}
    best, scores = select([a, b], runs, [1, 2], target=0.9, rounds=3)
    assert scores[a].mean_rounds == pytest.approx((1 + 4) / 2)  # never counts as 4
    assert best == a  # 2.5 rounds on average beats 3
    # the same mean rounds (2): the higher mean accuracy of the last rounds wins
    second = [0.1, 0.85, 0.9, 0.92]  # reaches 0.9 in round 2 on both seeds
    runs = {(a.label, 1): Curve(a.label, FAST), (a.label, 2): Curve(a.label, SLOW),
            (b.label, 1): Curve(b.label, second), (b.label, 2): Curve(b.label, second)}
    best, scores = select([a, b], runs, [1, 2], target=0.9, rounds=3)
    assert scores[a].mean_rounds == scores[b].mean_rounds == 2
    assert scores[b].tail_acc > scores[a].tail_acc
    assert best == b


def test_a_missing_tuning_run_is_an_error_not_a_skip() -> None:
    a, b = configs()
    runs = {(a.label, 1): Curve(a.label, FAST), (b.label, 2): Curve(b.label, FAST)}
    with pytest.raises(ProtocolError, match=r"seed\(s\) \[1\]"):
        select([a, b], runs, [1], target=0.9, rounds=3)


def test_tuning_and_reported_seeds_are_disjoint() -> None:
    check_seeds([100, 101], [0, 1])
    with pytest.raises(ProtocolError, match=r"\[1\]"):
        check_seeds([1, 100], [0, 1])


def test_every_family_gets_the_same_budget() -> None:
    budget = len(CLIENT_LRS) * len(FAMILIES[0].server_grid)
    per_family = budget_configs(FAMILIES, budget)
    assert {len(c) for c in per_family.values()} == {budget}
    fedavg = [c.local_lr for c in per_family["Flower FedAvg"]]
    assert min(fedavg) == min(CLIENT_LRS) and max(fedavg) == max(CLIENT_LRS)
    for configs_ in per_family.values():  # no configuration twice
        assert len({c.label for c in configs_}) == budget
    lopsided = Family("lopsided", grid(mu=(0.1,)), FAMILIES[0].make)
    with pytest.raises(ProtocolError, match="lopsided"):
        budget_configs([*FAMILIES, lopsided], budget)
