"""Random run configs (known and unknown keys, values of every type TOML and Python can
give: NaN, infinities, huge integers, lists, tables, odd strings) through
parse_run_config: a valid MergeConfig or a ConfigError naming the key, nothing else."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.config import ConfigError, MergeConfig, parse_run_config

KNOWN = sorted(f.alias or n for n, f in MergeConfig.model_fields.items())
scalars = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0, -1, 1, 0.5, 2**63, -(2**70), "", True]),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(),
    st.text(max_size=12), st.sampled_from(["~nobody-such-user/x", "a\0b", "adam", "mean"]),
    st.none(), st.binary(max_size=4),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))
configs = st.dictionaries(st.one_of(st.sampled_from(KNOWN), st.text(max_size=10)), values,
                          max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(config=configs)
def test_a_config_is_valid_or_a_config_error_naming_the_key(config: dict) -> None:
    try:
        cfg = parse_run_config(config)
    except ConfigError as exc:
        assert any(key in str(exc) for key in config), (config, str(exc))
        return
    for name, value in cfg.model_dump().items():
        if isinstance(value, float):
            assert math.isfinite(value), name
    cfg.out_path  # noqa: B018 - every command resolves it next
    assert parse_run_config(cfg.as_run_config()) == cfg  # what the store keeps reads back


def test_what_the_fuzzer_found_is_a_config_error() -> None:
    for config, key in [({"out-dir": "~nobody-such-user/x"}, "out-dir"),
                        ({"out-dir": "a\0b"}, "out-dir"), ({"server-lr": math.inf}, "server-lr"),
                        ({"round-timeout": math.nan}, "round-timeout"),
                        ({"db": "not a url"}, "db")]:
        try:
            parse_run_config(config)
        except ConfigError as exc:
            assert key in str(exc)
        else:
            raise AssertionError(f"{config} was accepted")
