"""max-norm-ratio's reference norm with a hostile budget (coordinator/replies.py): hostile
clients in a minority cannot pull it below the honest median, nor above the honest
maximum."""

from __future__ import annotations

import itertools
import statistics

import pytest

from aggregation.combiners import reference_norm
from coordinator.config import ConfigError, parse_run_config
from coordinator.replies import ReplyValidator, UpdateLimits

HONEST = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 7.0]  # median 2.5, max 7


def test_without_a_budget_the_reference_is_the_median() -> None:
    for norms in ([3.0, 1.0, 2.0], [4.0, 1.0, 2.0, 3.0], HONEST):
        assert reference_norm(norms) == statistics.median(norms)


@pytest.mark.parametrize("hostile", [1e-9, 0.5, 2.6, 1e9])
def test_three_hostile_norms_cannot_move_it_outside_the_honest_median_and_max(
    hostile: float,
) -> None:
    ref = reference_norm(HONEST + [hostile] * 3, 3)
    assert statistics.median(HONEST) <= ref <= max(HONEST)


def test_any_mix_of_f_hostile_norms_keeps_it_within_the_honest_range() -> None:
    honest = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    for f in (1, 2):
        for hostile in itertools.product([1e-6, 4.5, 1e6], repeat=f):
            ref = reference_norm(honest + list(hostile), f)
            assert statistics.median(honest) <= ref <= max(honest), (f, hostile)


def test_small_norm_attackers_no_longer_get_honest_offsets_rejected() -> None:
    norms = {f"h{i}": n for i, n in enumerate(HONEST)} | {f"x{i}": 0.01 for i in range(3)}
    plain = ReplyValidator(UpdateLimits(max_norm_ratio=3.0)).screen(norms)
    robust = ReplyValidator(UpdateLimits(max_norm_ratio=3.0, norm_ratio_byzantine=3))
    assert set(plain) == {"h6"}  # 7 exceeds 3 x the pulled-down median 1.75
    assert robust.screen(norms) == {}
    huge = robust.screen({**norms, "x0": 100.0, "x1": 100.0, "x2": 100.0})
    assert set(huge) == {"x0", "x1", "x2"} and "reference (f=3)" in huge["x0"]


def test_the_budget_key_is_validated_with_its_name() -> None:
    assert parse_run_config({"norm-ratio-byzantine": 3}).norm_ratio_byzantine == 3
    with pytest.raises(ConfigError, match="norm-ratio-byzantine"):
        parse_run_config({"norm-ratio-byzantine": -1})
