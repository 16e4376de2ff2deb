"""Rules the coordinator and the dashboard share have one implementation."""

from __future__ import annotations

import pytest

from dashboard import settings
from fedmerge.deploy import service


def test_the_coordinator_uses_the_dashboards_loopback_rule() -> None:
    assert service.is_loopback is settings.is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "[::1]",
                                  "localhost"])
def test_all_of_127_8_and_ipv6_loopback_are_loopback(host: str) -> None:
    assert service.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "example.org", "128.0.0.1"])
def test_other_hosts_are_not(host: str) -> None:
    assert not service.is_loopback(host)
