"""Browser hardening for every response, and the Host-header guard against DNS rebinding.

``SecurityHeaders`` adds a Content-Security-Policy that allows only the dashboard's own
origin (no inline script or style, no frames), Referrer-Policy no-referrer, X-Frame-Options
DENY and nosniff. ``HostGuard`` answers 400 to a Host header the dashboard was not started
for: a page on another site whose name was rebound to 127.0.0.1 reaches the port, but
its requests carry that site's name, so they are refused.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard.settings import DashboardSettings, is_loopback

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
)
LOOPBACK_ALIASES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "[::]", "")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in HEADERS if k not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _bracketed(host: str) -> str:
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_hosts(settings: DashboardSettings) -> frozenset[str] | None:
    """The Host header values answered (``name`` = any port), or None for any host.

    Configured ``allowed_hosts`` win. Otherwise: the bind host on its port, plus
    127.0.0.1, localhost and [::1] when it is loopback; a wildcard bind (0.0.0.0) needs
    a token, which guards it, so any host name may reach it.
    """
    if settings.allowed_hosts:
        if "*" in settings.allowed_hosts:
            return None
        return frozenset(h.strip().lower() for h in settings.allowed_hosts)  # IPv6: [::1]
    host = _bracketed(settings.host)
    if host in WILDCARDS:
        return None
    names = {host, *LOOPBACK_ALIASES} if is_loopback(settings.host) else {host}
    port = settings.port
    return frozenset(
        entry for name in names
        for entry in (f"{name}:{port}", *((name,) if port == 80 else ()))
    )


def host_allowed(header: str, allowed: frozenset[str]) -> bool:
    header = header.strip().lower()
    if header in allowed:
        return True
    name, sep, port = header.rpartition(":")
    return bool(sep) and port.isdigit() and name in allowed


class HostGuard:
    def __init__(self, app: ASGIApp, *, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.allowed):
                response = PlainTextResponse(
                    "400 Bad Request: this dashboard does not answer to the host name in "
                    "the request (set allowed_hosts / $FEDMERGE_DASHBOARD_ALLOWED_HOSTS).",
                    400,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
