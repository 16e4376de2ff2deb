"""The dashboard's settings: one pydantic model, validated once, readable from the environment."""

from __future__ import annotations

import ipaddress
import os
from typing import Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "FEDMERGE_DASHBOARD_"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class DashboardConfigError(ValueError):
    """A dashboard setting is invalid; the message names the setting, never its value."""


class InsecureBind(ValueError):
    """A host other than loopback without a token: the runs would be readable by anyone."""


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: only the loopback names above count
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Raise InsecureBind unless ``host`` is loopback or a token guards the dashboard."""
    if token is None and not is_loopback(host):
        raise InsecureBind(
            f"refusing to serve the dashboard on {host!r} without a token: anyone who can "
            "reach that address could read every run. Set a token (token=... or "
            f"${ENV_PREFIX}TOKEN) or bind to 127.0.0.1."
        )


class DashboardSettings(BaseModel):
    """Where the run store is, who may read it, and where to listen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    db_url: str = Field(min_length=1)  # SQLAlchemy URL of the run store
    token: str | None = None  # None = no auth (loopback only)
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Host headers answered (DNS rebinding guard); empty = the bind host (and loopback
    # aliases) on its port. "name" allows any port, "name:port" one, "*" any host.
    allowed_hosts: tuple[str, ...] = ()
    # Seconds a polled answer (run page, plots, the API's run routes) may lag the store:
    # the store's state is read at most this often and answers are kept per state
    # (dashboard/cache.py). 0: read it on every request (answers are still kept per state).
    poll_cache_s: float = Field(default=0.5, ge=0.0, le=60.0)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: comma-separated
            return tuple(h.strip() for h in value.split(",") if h.strip())
        return value

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, token: str | None) -> str | None:
        if token is not None and len(token.strip()) < 8:
            raise ValueError("the dashboard token must be at least 8 characters")
        return token

    @model_validator(mode="after")
    def _safe_exposure(self) -> Self:
        check_exposure(self.host, self.token)
        return self

    @classmethod
    def from_env(cls, **overrides: object) -> DashboardSettings:
        """$FEDMERGE_DASHBOARD_DB_URL, _TOKEN, _HOST, _PORT; keyword overrides win."""
        values: dict[str, object] = {}
        for name in cls.model_fields:
            if (raw := os.environ.get(f"{ENV_PREFIX}{name.upper()}")) is not None:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.checked(**values)

    @classmethod
    def checked(cls, **values: object) -> DashboardSettings:
        """Validate ``values``; DashboardConfigError (one line, no values echoed) if bad."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: "
                f"{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise DashboardConfigError(f"invalid dashboard settings: {problems}") from None
