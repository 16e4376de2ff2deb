"""The operator token: what a Control API request (``fedmerge submit``, ``flwr run``,
``flwr list``, ``flwr supernode register``) must carry to be accepted by a fedmerge
coordinator (fedmerge/deploy/superlink.py).

The coordinator keeps it in ``<out-dir>/operator.token`` (0600; made at first start, or
written from ``$FEDMERGE_OPERATOR_TOKEN``). A client hands it to Flower's CLI the way
Flower's own account login does: as the access token of its SuperLink connection in
``$FLWR_HOME/credentials.yaml``, so the stock ``flwr`` commands send it too.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from coordinator.home import fedmerge_home
from fedmerge.deploy.procs import ServiceError
from fedmerge.deploy.superlink import MIN_TOKEN_LEN, TokenError, read_token

ENV_TOKEN = "FEDMERGE_OPERATOR_TOKEN"
TOKEN_FILE = "operator.token"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, whatever the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def coordinator_token_file(out_dir: Path, given: str | None) -> Path:
    """``<out_dir>/operator.token``: ``given`` written there, else the one already there,
    else a fresh random one."""
    path = out_dir / TOKEN_FILE
    if given is not None:
        if len(given.strip()) < MIN_TOKEN_LEN:
            raise ServiceError(f"{ENV_TOKEN} is shorter than {MIN_TOKEN_LEN} characters")
        write_private(path, given.strip())
    elif not path.exists():
        write_private(path, secrets.token_urlsafe(32))
    else:
        os.chmod(path, 0o600)
        _checked(path)
    return path


def client_token(given: str | None, token_file: Path | None) -> str | None:
    """The token a client sends: ``given`` ($FEDMERGE_OPERATOR_TOKEN), else the file
    named with --operator-token-file, else this machine's coordinator's, if readable."""
    if given:
        return given.strip()
    if token_file is not None:
        if not token_file.is_file():
            raise ServiceError(f"--operator-token-file {token_file}: no such file")
        return _checked(token_file)
    default = fedmerge_home() / TOKEN_FILE
    if default.is_file() and os.access(default, os.R_OK):
        return _checked(default)
    return None


def _checked(path: Path) -> str:
    try:
        return read_token(path)
    except TokenError as exc:
        raise ServiceError(str(exc)) from None


def store_for_flwr_cli(flwr_home: Path, address: str, token: str) -> None:
    """Make Flower's CLI (and ``control_client``) send ``token`` to ``address``."""
    from flwr.cli.constant import (
        ACCESS_TOKEN_STORE_KEY,
        AUTHN_TYPE_STORE_KEY,
        REFRESH_TOKEN_STORE_KEY,
    )
    from flwr.common.constant import AuthnType
    from flwr.supercore.credential_store.file_credential_store import FileCredentialStore

    store = FileCredentialStore(flwr_home / "credentials.yaml")
    store.set(AUTHN_TYPE_STORE_KEY % address, AuthnType.OIDC.encode())
    store.set(ACCESS_TOKEN_STORE_KEY % address, token.encode())
    # Flower's client sends only the access token; the refresh token must merely exist.
    store.set(REFRESH_TOKEN_STORE_KEY % address, b"-")
    os.chmod(flwr_home / "credentials.yaml", 0o600)


def control_client(connection: str, flwr_home: Path):  # noqa: ANN201 - ControlHttpClient
    """Flower's Control API client for a connection of ``flwr_home``, with the stored
    token (if any) for its address."""
    from flwr.cli.auth_plugin import get_cli_plugin_class
    from flwr.cli.constant import AUTHN_TYPE_STORE_KEY
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.common.constant import AuthnType
    from flwr.supercore.credential_store.file_credential_store import FileCredentialStore

    conn = read_superlink_connection(connection)
    store = FileCredentialStore(flwr_home / "credentials.yaml")
    kind = store.get(AUTHN_TYPE_STORE_KEY % conn.address)
    plugin = get_cli_plugin_class(kind.decode() if kind else AuthnType.NOOP)(conn.address)
    plugin.store = store  # type: ignore[attr-defined] - the file of this flwr home
    return init_http_client_from_connection(conn, auth_plugin=plugin)


def token_client(address: str, *, root_cert: Path | None, token: str):  # noqa: ANN201
    """A Control API client for ``address`` that sends ``token``, with no connection file
    (the coordinator's own calls: registering keys)."""
    from flwr.cli.auth_plugin import OidcCliPlugin
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    class Fixed(OidcCliPlugin):
        def load_tokens(self) -> None:  # the token given here, not a credentials file
            self.access_token, self.refresh_token = token, "-"

    conn = SuperLinkConnection(name="fedmerge-coordinator", address=address,
                               root_certificates=str(root_cert) if root_cert else None,
                               insecure=root_cert is None)
    return init_http_client_from_connection(conn, auth_plugin=Fixed(address))
