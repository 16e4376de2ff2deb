"""The async run-config keys and the slowdown node setting: validated, the key named."""

from __future__ import annotations

import pytest

from client.slowdown import SlowdownError, pause, slowdown_of
from coordinator.config import ConfigError, parse_run_config


def test_async_keys_parse_with_merge_async() -> None:
    cfg = parse_run_config({"merge": "async", "buffer-size": 3, "concurrency": 5,
                            "staleness": "hinge", "staleness-exponent": 2.0,
                            "staleness-hinge": 1, "max-staleness": 7})
    assert (cfg.merge, cfg.buffer_size, cfg.concurrency, cfg.staleness) == ("async", 3, 5, "hinge")
    assert parse_run_config({}).merge == "sync"


@pytest.mark.parametrize(("config", "key"), [
    ({"merge": "rounds"}, "merge"),
    ({"merge": "async", "buffer-size": 0}, "buffer-size"),
    ({"merge": "async", "concurrency": -1}, "concurrency"),
    ({"merge": "async", "staleness": "linear"}, "staleness"),
    ({"merge": "async", "staleness-exponent": -0.5}, "staleness-exponent"),
    ({"merge": "async", "max-staleness": -1}, "max-staleness"),
    ({"buffer-size": 8}, "buffer-size"),  # set while merge is sync: it would do nothing
    ({"merge": "async", "dp": "central", "dp-clip": 1.0, "dp-noise-multiplier": 1.0,
      "num-clients": 10, "min-nodes": 2}, "merge"),
    ({"merge": "async", "combiner": "krum", "min-nodes": 5, "buffer-size": 4}, "buffer-size"),
])
def test_bad_async_config_names_the_key(config, key) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_run_config(config)


def test_slowdown_is_off_by_default_and_bad_values_are_named() -> None:
    assert slowdown_of({}) == 1.0
    assert slowdown_of({"slowdown": 5}) == 5.0
    assert pause({}, 10.0) == 0.0  # off: no sleep whatever the train time
    assert pause({"slowdown": 3}, 0.01) == pytest.approx(0.02)
    for bad in (0.5, "fast", float("inf")):
        with pytest.raises(SlowdownError, match="slowdown"):
            slowdown_of({"slowdown": bad})
