"""Flower's SuperLink with its doors closed: ``python -m fedmerge.deploy.superlink --
<flower-superlink arguments>``, the operator token's file in ``$FEDMERGE_OPERATOR_TOKEN_FILE``.

Flower 1.42 serves the Fleet API (workers), the Control API (run submission, SuperNode
registration) and the ServerAppIo/Runtime API (the ServerApp's and SuperExec's side) from
one HTTP app on one port. Open-source Flower authenticates neither of the latter two:
whoever reaches the port can start a run (which executes ServerApp code on the
coordinator) or, in subprocess isolation, acquire a run's ServerApp task. This entry point
runs the very same SuperLink with two changes:

- the Control API's authentication plugin (``SuperLinkLifespanConfig.authn_plugin``, the
  extension point Flower's own OIDC plugin uses) is ``OperatorTokenAuthn``: every Control
  request needs ``Authorization: Bearer <operator token>``, from any address;
- a path allow-list in front of the app: a peer that is not on loopback reaches only the
  Fleet routes and the (token-guarded) Control routes; the Runtime API, the OpenAPI pages
  and anything Flower adds later answer 403.

Every file the SuperLink writes (its state database among them) is private to its user
(umask 077).
"""

from __future__ import annotations

import hmac
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dashboard.settings import is_loopback  # the one loopback rule

ENV_TOKEN_FILE = "FEDMERGE_OPERATOR_TOKEN_FILE"
MIN_TOKEN_LEN = 16
PUBLIC_PREFIXES = ("/v1/fleet/", "/v1/control/")  # the latter behind the operator token


class TokenError(ValueError):
    """The operator token file is missing, unreadable or too short (never echoed)."""


def read_token(path: Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise TokenError(f"operator token file {path}: {exc.strerror}") from None
    if len(token) < MIN_TOKEN_LEN:
        raise TokenError(f"operator token in {path} is shorter than {MIN_TOKEN_LEN} "
                         "characters")
    return token


def is_loopback_peer(client: tuple[str, int] | None) -> bool:
    """Whether an ASGI peer (host, port) is on loopback, by the one loopback rule."""
    return client is not None and is_loopback(client[0].split("%")[0])


def public_path(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES)


class FleetOnlyOffLoopback:
    """ASGI middleware: requests from a non-loopback peer to anything but the public
    prefixes are refused with 403 before Flower sees them."""

    def __init__(self, app) -> None:  # noqa: ANN001 - an ASGI app
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if (scope["type"] == "http" and not public_path(scope.get("path", ""))
                and not is_loopback_peer(scope.get("client"))):
            from starlette.responses import PlainTextResponse

            refused = PlainTextResponse("only the Fleet API is served off loopback",
                                        status_code=403)
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


def operator_authn(token: str):  # noqa: ANN201 - a ControlAuthnPlugin, built lazily
    """A Control API authentication plugin that accepts exactly ``token``."""
    from flwr.common.constant import ACCESS_TOKEN_KEY, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
    from flwr.supercore.auth.typing import AccountInfo
    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.superlink.auth_plugin import ControlAuthnPlugin

    expected = token.encode()

    class OperatorTokenAuthn(ControlAuthnPlugin):
        def __init__(self) -> None:
            pass

        def get_login_details(self):  # noqa: ANN202 - `flwr login` is not how it works
            return None

        def validate_tokens_in_metadata(self, metadata: Sequence[tuple[str, str | bytes]]):  # noqa: ANN202
            given = next((v for k, v in metadata if k == ACCESS_TOKEN_KEY), None)
            if given is None:
                return False, None
            given_bytes = given.encode() if isinstance(given, str) else given
            if not hmac.compare_digest(given_bytes, expected):
                return False, None
            # Flower's own account for an unauthenticated SuperLink: runs stay listable
            # the same way as before the door was closed.
            return True, AccountInfo(flwr_aid=NOOP_FLWR_AID, account_name=NOOP_ACCOUNT_NAME)

        def get_auth_tokens(self, device_code: str):  # noqa: ANN202
            raise FlowerError(ApiErrorCode.NO_ACCOUNT_AUTH,
                              "this SuperLink takes fedmerge's operator token")

        def refresh_tokens(self, metadata: Sequence[tuple[str, str | bytes]]):  # noqa: ANN202
            return None, None

    return OperatorTokenAuthn()


def install(token: str) -> None:
    """Patch Flower's SuperLink start-up: our Control plugin and the path allow-list."""
    from flwr.superlink import extensions
    from starlette.middleware import Middleware

    # the module (flwr.superlink.cli re-exports a function of the same name)
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    if not hasattr(cli, "load_control_authn_plugin"):
        raise RuntimeError(f"this Flower's SuperLink ({cli.__file__}) has changed: its "
                           "Control API cannot be closed; refusing to start")
    plugin = operator_authn(token)
    cli.load_control_authn_plugin = lambda: plugin
    flwr_middleware = extensions.get_middleware

    def middleware() -> tuple[Middleware, ...]:
        return (Middleware(FleetOnlyOffLoopback), *flwr_middleware())  # ours outermost

    extensions.get_middleware = middleware  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    rest = args[1:] if args[:1] == ["--"] else args
    token_file = os.environ.get(ENV_TOKEN_FILE)
    if not token_file:
        sys.exit(f"error: {ENV_TOKEN_FILE} is not set: the Control API stays closed")
    try:
        token = read_token(Path(token_file))
    except TokenError as exc:
        sys.exit(f"error: {exc}")
    os.umask(0o077)  # state.db, its journal, the FABs: the service user's only
    install(token)
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = ["flower-superlink", *rest]  # it parses sys.argv itself
    flower_superlink()


if __name__ == "__main__":
    main()
