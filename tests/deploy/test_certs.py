"""``fedmerge/certs.py``: what Flower and TLS clients will accept."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from typer.testing import CliRunner

from fedmerge.certs import CertsExist, make_certs
from fedmerge.cli import app


def test_server_certificate_names_loopback_and_the_given_hosts(tmp_path: Path) -> None:
    paths = make_certs(tmp_path, hosts=["coord.example.org", "10.0.0.5"], nodes=1)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "coord.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.0.0.5")
    }
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = load_pem_private_key(paths.server_key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_node_keys_are_what_flower_loads(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    paths = make_certs(tmp_path, nodes=2)
    for private, public in paths.node_keys:
        key = load_ssh_private_key(private.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert try_load_public_key(public)  # `flwr supernode register` accepts it
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600


def test_existing_files_are_kept_unless_forced(tmp_path: Path) -> None:
    first = make_certs(tmp_path, nodes=1).ca_cert.read_bytes()
    with pytest.raises(CertsExist, match="ca.pem"):
        make_certs(tmp_path, nodes=1)
    assert make_certs(tmp_path, nodes=1, force=True).ca_cert.read_bytes() != first


def test_certs_command(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["certs", str(tmp_path / "c"), "--nodes", "3",
                                   "--host", "coord.lan"])
    assert out.exit_code == 0, out.output
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.key", "ca.pem", "node-0.key", "node-0.pub", "node-1.key", "node-1.pub",
        "node-2.key", "node-2.pub", "server.key", "server.pem",
    ]
    again = CliRunner().invoke(app, ["certs", str(tmp_path / "c")])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
