"""`dagwire up --secure`: a development CA, certificates, principals and a grant key.

Everything lives under ``DIR/secure/`` and is made once; a later `--secure` start reuses it,
principals added to its auth file included (docs/security.md):

- ``ca.pem``/``ca.key``: the CA; ``<name>.pem``/``<name>.key`` for the store, dispatcher,
  orchestrator, toolbox and the client: EC P-256, PKCS#8 keys, SANs ``localhost``,
  ``127.0.0.1`` and the listen host, serverAuth and clientAuth, valid a year;
- ``auth.yaml``: the principals: ``client`` (namespace ``default``), ``toolbox`` (adapter of
  the toolbox's agents), ``admin``, and a service principal per service;
- ``tokens/<name>.token``: their tokens (mode 0600; the auth file keeps only hashes);
- ``grant.key``: the key the dispatcher and the store share for adapters' store grants;
- ``client.env``: ``export`` lines for a shell, so that
  ``source DIR/secure/client.env && dagwire run examples/hello.yaml`` works.

These are for one machine: a production CA and tokens come from your own PKI and secrets.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dagwire.auth import AuthFile, add_principal, load_principals
from dagwire.toolbox import TOOLBOX_AGENTS

__all__ = ["SERVICES", "SecureSetup", "issue_certificate", "prepare_secure"]

SERVICES = ("store", "dispatcher", "orchestrator", "toolbox")
"""The processes of the local stack, each with its own certificate and token."""
_VALID = datetime.timedelta(days=365)
_PRIVATE = 0o600


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(folder: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name("dagwire development CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(folder / "ca.key", _key_pem(key))
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue_certificate(folder: Path, common_name: str, host: str) -> None:
    """Write ``NAME.pem``/``NAME.key`` signed by the CA in `folder` (for another adapter)."""
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    if extra not in names:
        names.append(extra)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(folder / f"{common_name}.key", _key_pem(key))
    (folder / f"{common_name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class SecureSetup:
    """The files of a ``DIR/secure/`` folder and the environment they give each process."""

    folder: Path

    @property
    def auth_file(self) -> Path:
        return self.folder / "auth.yaml"

    @property
    def client_env_file(self) -> Path:
        return self.folder / "client.env"

    def token_file(self, name: str) -> Path:
        return self.folder / "tokens" / f"{name}.token"

    def service_env(self, name: str) -> dict[str, str]:
        """What one of `SERVICES` runs with: its certificate (also its client identity), mTLS,
        the auth file, its own token and, for the store and dispatcher, the grant key."""
        env = {
            "DAGWIRE_TLS_CERT": str(self.folder / f"{name}.pem"),
            "DAGWIRE_TLS_KEY": str(self.folder / f"{name}.key"),
            "DAGWIRE_TLS_CLIENT_CA": str(self.folder / "ca.pem"),
            "DAGWIRE_TLS_CA": str(self.folder / "ca.pem"),
            "DAGWIRE_TLS_CLIENT_CERT": str(self.folder / f"{name}.pem"),
            "DAGWIRE_TLS_CLIENT_KEY": str(self.folder / f"{name}.key"),
            "DAGWIRE_AUTH_FILE": str(self.auth_file),
            "DAGWIRE_TOKEN": "",
            "DAGWIRE_TOKEN_FILE": str(self.token_file(name)),
        }
        if name in ("store", "dispatcher"):
            env["DAGWIRE_GRANT_KEY_FILE"] = str(self.folder / "grant.key")
        return env

    def client_env(self, principal: str = "client") -> dict[str, str]:
        """What a client of the stack runs with, as `principal` (``client`` or ``admin``)."""
        return {
            "DAGWIRE_TLS_CA": str(self.folder / "ca.pem"),
            "DAGWIRE_TLS_CLIENT_CERT": str(self.folder / "client.pem"),
            "DAGWIRE_TLS_CLIENT_KEY": str(self.folder / "client.key"),
            "DAGWIRE_TOKEN": self.token_file(principal).read_text().strip(),
        }


def _principal(
    setup: SecureSetup,
    name: str,
    *,
    roles: Sequence[str],
    namespaces: Sequence[str] = (),
    agents: Sequence[str] = (),
) -> None:
    """Make sure the auth file has a principal whose token is in ``tokens/<name>.token``."""
    token_file = setup.token_file(name)
    taken: set[str] = set()
    if setup.auth_file.exists():
        if token_file.exists():
            known = AuthFile(setup.auth_file).by_token(token_file.read_text().strip())
            if known is not None:
                return
        taken = {p.name for p in load_principals(setup.auth_file.read_text())}
    entry, count = name, 2
    while entry in taken:  # its token file was lost: a new principal beside the old entry
        entry, count = f"{name}-{count}", count + 1
    token = add_principal(
        setup.auth_file, name=entry, roles=roles, namespaces=namespaces, agents=agents
    )
    _write_private(token_file, (token + "\n").encode())


def prepare_secure(data_dir: Path, *, host: str, addresses: Mapping[str, str]) -> SecureSetup:
    """Make (or reuse) ``data_dir/secure/`` and write its ``client.env``.

    Args:
        data_dir: the stack's data directory.
        host: the listen host, added to every certificate's names.
        addresses: ``DAGWIRE_*_ADDR`` variables written into ``client.env`` too.

    Raises:
        OSError: a file cannot be read or written.
        SettingsError: an existing auth file is invalid.
    """
    folder = data_dir / "secure"
    (folder / "tokens").mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    os.chmod(folder / "tokens", 0o700)
    setup = SecureSetup(folder)
    if not (folder / "ca.pem").exists() or not (folder / "ca.key").exists():
        _make_ca(folder)
    for name in (*SERVICES, "client"):
        if not (folder / f"{name}.pem").exists() or not (folder / f"{name}.key").exists():
            issue_certificate(folder, name, host)
    if not (folder / "grant.key").exists():
        _write_private(folder / "grant.key", os.urandom(48).hex().encode())
    for name in ("store", "dispatcher", "orchestrator"):
        _principal(setup, name, roles=["service"])
    _principal(setup, "toolbox", roles=["adapter"], agents=sorted(TOOLBOX_AGENTS))
    _principal(setup, "client", roles=["client"], namespaces=["default"])
    _principal(setup, "admin", roles=["admin"])
    lines = [
        "# dagwire up --secure: `source` this file to talk to the stack as the client principal",
        *(
            f"export {key}={shlex.quote(value)}"
            for key, value in {**setup.client_env(), **addresses}.items()
        ),
        '# as the admin instead: export DAGWIRE_TOKEN="$(cat '
        + shlex.quote(str(setup.token_file("admin")))
        + ')"',
    ]
    _write_private(setup.client_env_file, ("\n".join(lines) + "\n").encode())
    return setup
