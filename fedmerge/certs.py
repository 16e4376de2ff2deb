"""Certificates for a first deployment and for the tests: a CA, the SuperLink's server
certificate, and SuperNode authentication key pairs.

    ca.pem, ca.key            the certificate authority (keep ca.key offline)
    server.pem, server.key    the SuperLink's TLS certificate, SAN 127.0.0.1, ::1,
                              localhost and the given hosts (names or IP addresses)
    node-<i>.key, node-<i>.pub
                              SuperNode key pairs: ECDSA on NIST P-384 in OpenSSH format,
                              what ``flower-supernode --auth-supernode-private-key`` reads
                              and ``flwr supernode register`` takes

Private keys are written 0600 (also over an existing file), public files 0644, and a
directory made here 0700, whatever the umask. Existing files are never overwritten unless ``force``.
For production, a CA your organisation already runs is better than this one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from coordinator.store.paths import private_dir

LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


class CertsExist(FileExistsError):
    """A file ``make_certs`` would write is already there (pass force=True to replace)."""


@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[tuple[Path, Path], ...]  # (private, public) per SuperNode


def cert_paths(directory: Path, nodes: int) -> CertPaths:
    d = Path(directory)
    return CertPaths(
        ca_cert=d / "ca.pem", ca_key=d / "ca.key",
        server_cert=d / "server.pem", server_key=d / "server.key",
        node_keys=tuple((d / f"node-{i}.key", d / f"node-{i}.pub") for i in range(nodes)),
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys([*LOOPBACK_NAMES, *hosts]):  # ordered, unique
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmerge"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``path`` with mode 0600 (private) or 0644, whatever the umask and whatever
    mode a file it replaces had; a new directory is made 0700."""
    private_dir(path.parent)
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # before the first byte: a key is never readable
        f.write(data)


def make_certs(
    directory: Path, *, hosts: Sequence[str] = (), nodes: int = 2, days: int = 365,
    force: bool = False,
) -> CertPaths:
    """Write a CA, a server certificate for ``hosts`` (plus loopback) and ``nodes``
    SuperNode key pairs into ``directory``."""
    paths = cert_paths(directory, nodes)
    targets = [paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key]
    targets += [p for pair in paths.node_keys for p in pair]
    if not force and (existing := [str(p) for p in targets if p.exists()]):
        raise CertsExist(f"refusing to overwrite {', '.join(existing)} (use --force)")

    now = dt.datetime.now(dt.UTC)
    valid_from, valid_to = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedmerge CA")).issuer_name(_name("fedmerge CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedmerge SuperLink")).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.ca_key, _pem_key(ca_key), private=True)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.server_key, _pem_key(server_key), private=True)
    for private_path, public_path in paths.node_keys:
        write_node_key_pair(private_path, public_path)
    return paths


def write_node_key_pair(private_path: Path, public_path: Path) -> None:
    """One SuperNode key pair, as ``ssh-keygen -t ecdsa -b 384 -N ''`` would write it."""
    key = ec.generate_private_key(ec.SECP384R1())
    _write(
        private_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                          serialization.NoEncryption()),
        private=True,
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write(public_path, public + b" fedmerge-supernode\n", private=False)
