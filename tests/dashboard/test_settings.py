"""DashboardSettings: validated once, fails fast, readable from FEDMERGE_DASHBOARD_*."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dashboard.settings import DashboardSettings, InsecureBind, check_exposure, is_loopback


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMERGE_DASHBOARD_DB_URL", "sqlite:////tmp/x.db")
    monkeypatch.setenv("FEDMERGE_DASHBOARD_TOKEN", "a-long-enough-token")
    monkeypatch.setenv("FEDMERGE_DASHBOARD_HOST", "0.0.0.0")
    monkeypatch.setenv("FEDMERGE_DASHBOARD_PORT", "9000")
    settings = DashboardSettings.from_env()
    assert settings == DashboardSettings(
        db_url="sqlite:////tmp/x.db", token="a-long-enough-token", host="0.0.0.0", port=9000
    )
    assert DashboardSettings.from_env(port=9001).port == 9001


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_exposure(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_exposed_hosts_need_a_token(host: str) -> None:
    with pytest.raises(InsecureBind, match="without a token"):
        check_exposure(host, None)
    with pytest.raises(ValidationError, match="without a token"):
        DashboardSettings(db_url="sqlite://", host=host)
    assert DashboardSettings(db_url="sqlite://", host=host, token="long-enough").host == host


@pytest.mark.parametrize(
    "bad", [{"db_url": ""}, {"token": "short"}, {"port": 70000}, {"surprise": 1}]
)
def test_bad_settings_fail_fast(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DashboardSettings.model_validate({"db_url": "sqlite://", **bad})
