"""The token gate: a pure ASGI middleware in front of every route but ``/static``.

A request passes with ``Authorization: Bearer <token>`` or with the session cookie.
``?token=<token>`` is answered by a redirect to the same address without the token that
sets that HttpOnly cookie: the token leaves the address bar, history and Referer, and a
browser needs it only in its first URL. Anything else gets 401: JSON under ``/api`` and
``/openapi.json`` (or when the client asks for JSON), a small HTML page otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "fedmerge_dashboard"
OPEN_PREFIXES = ("/static/",)  # stylesheet and script: nothing about any run
JSON_PREFIXES = ("/api/", "/api", "/openapi.json")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fedmerge dashboard"'}


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the token itself is not stored."""
    return hmac.new(token.encode(), b"fedmerge-dashboard-session", hashlib.sha256).hexdigest()


def wants_json(scope: Scope) -> bool:
    path: str = scope["path"]
    if path.startswith(JSON_PREFIXES):
        return True
    accept = dict(scope.get("headers", [])).get(b"accept", b"").decode("latin-1")
    return "application/json" in accept and "text/html" not in accept


class TokenGate:
    def __init__(
        self, app: ASGIApp, *, token: str, refuse_html: Callable[[Request], Response]
    ) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_value(token)
        self.refuse_html = refuse_html

    def _same(self, given: str | None, expected: str) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), expected.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        auth = headers.get(b"authorization", b"").decode("latin-1")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [None])[-1]
        cookies = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        jar = cookies[COOKIE].value if COOKIE in cookies else None
        if self._same(given, self.token):  # even with a cookie: the URL must lose it
            await self._redirect_with_cookie(scope, receive, send)
        elif self._same(bearer, self.token) or self._same(jar, self.cookie):
            await self.app(scope, receive, send)
        else:
            await self._refuse(scope, receive, send)

    async def _redirect_with_cookie(self, scope: Scope, receive: Receive, send: Send) -> None:
        kept = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                              keep_blank_values=True) if k != "token"]
        target = scope.get("root_path", "") + scope["path"]
        if kept:
            target += "?" + urlencode(kept)
        response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
        response.set_cookie(COOKIE, self.cookie, path="/", httponly=True, samesite="strict",
                            secure=scope.get("scheme") == "https")
        await response(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        if wants_json(scope):
            response: Response = JSONResponse(
                {"detail": "a valid dashboard token is required"}, 401, headers=CHALLENGE
            )
        else:
            response = self.refuse_html(Request(scope, receive))
            response.headers.update(CHALLENGE)
        await response(scope, receive, send)
