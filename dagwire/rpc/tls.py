"""The one place for TLS: the ``DAGWIRE_TLS_*`` settings, their checks, and gRPC credentials.

Every server (`dagwire.rpc.serve`) and every client channel (`dagwire.rpc.channels`) reads
its TLS settings here, from the environment, when it is built; docs/security.md describes
them for users. They are environment variables only (no flags): one process holds servers
and many clients (a service's clients of its peers, the library's clients inside an adapter),
and all of them must agree.

- A server with ``DAGWIRE_TLS_CERT`` and ``DAGWIRE_TLS_KEY`` serves TLS only; with
  ``DAGWIRE_TLS_CLIENT_CA`` too it requires client certificates signed by that CA (mTLS). Its
  files are checked again at every new connection (one ``stat`` each) and re-read when they
  changed, so a rotated certificate is used without a restart (a half-written rotation, a key
  that does not match its certificate yet, keeps the previous files in use and is logged).
- A client dials TLS when ``DAGWIRE_TLS_CA`` (the CA it trusts for servers) or
  ``DAGWIRE_TLS_CLIENT_CERT`` is set. Its identity is ``DAGWIRE_TLS_CLIENT_CERT`` /
  ``DAGWIRE_TLS_CLIENT_KEY``, else the process's own server certificate (so services are
  their own identity towards each other). The files are read when a channel is made: new
  channels use rotated files, open channels keep the credentials they were made with (their
  established connections stay up; a reconnect also uses the old ones).
- ``DAGWIRE_TLS_SERVER_NAME`` is the name checked in servers' certificates for ``dns:``,
  ``ipv4:`` and ``ipv6:`` targets (a ``host:port`` target is checked against its host).
- ``DAGWIRE_HEALTH_ADDR``: a plaintext address serving ``grpc.health.v1`` alone, for probes
  that cannot speak TLS.

A missing, unreadable or invalid file is a `SettingsError` naming the variable and the path.
Nothing here imports `cryptography` (used to check the files) unless TLS is configured, so the
plaintext default costs a few environment lookups.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from dagwire.settings import SettingsError, check_listen_address

__all__ = [
    "TLS_ENV",
    "TlsConfig",
    "explain_connect_failure",
]

log = logging.getLogger(__name__)

#: Every variable this module reads, in the order docs/security.md lists them.
TLS_ENV = (
    "DAGWIRE_TLS_CERT",
    "DAGWIRE_TLS_KEY",
    "DAGWIRE_TLS_CLIENT_CA",
    "DAGWIRE_TLS_CA",
    "DAGWIRE_TLS_SERVER_NAME",
    "DAGWIRE_TLS_CLIENT_CERT",
    "DAGWIRE_TLS_CLIENT_KEY",
    "DAGWIRE_HEALTH_ADDR",
)

_NAMED_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The TLS settings of one process (all unset: plaintext, the default).

    Attributes:
        cert: ``DAGWIRE_TLS_CERT``, the server's certificate chain (PEM).
        key: ``DAGWIRE_TLS_KEY``, its private key (PEM, PKCS#8 for the other languages).
        client_ca: ``DAGWIRE_TLS_CLIENT_CA``, on a server: require client certificates it signed.
        ca: ``DAGWIRE_TLS_CA``, on a client: the CA trusted for servers.
        server_name: ``DAGWIRE_TLS_SERVER_NAME``, the name checked for dns:/ipv4:/ipv6: targets.
        client_cert: ``DAGWIRE_TLS_CLIENT_CERT``, a client's own certificate.
        client_key: ``DAGWIRE_TLS_CLIENT_KEY``, its key.
        health_addr: ``DAGWIRE_HEALTH_ADDR``, plaintext ``host:port`` serving health alone.
    """

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    ca: Path | None = None
    server_name: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    health_addr: str | None = None

    def __post_init__(self) -> None:
        _pair(self.cert, "DAGWIRE_TLS_CERT", self.key, "DAGWIRE_TLS_KEY")
        _pair(
            self.client_cert, "DAGWIRE_TLS_CLIENT_CERT", self.client_key, "DAGWIRE_TLS_CLIENT_KEY"
        )
        if self.client_ca is not None and self.cert is None:
            raise SettingsError(
                "DAGWIRE_TLS_CLIENT_CA is set but DAGWIRE_TLS_CERT and DAGWIRE_TLS_KEY are not: "
                "a server checks client certificates only when it serves TLS"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TlsConfig:
        """The settings in `environ` (default: the process environment); empty means unset.

        Raises:
            SettingsError: a certificate without its key (or the reverse), a client CA without a
                server certificate, or an invalid ``DAGWIRE_HEALTH_ADDR``.
        """
        env = os.environ if environ is None else environ
        values = {name: env.get(name, "").strip() for name in TLS_ENV}
        if not any(values.values()):
            return _PLAINTEXT
        health_addr = values["DAGWIRE_HEALTH_ADDR"] or None
        if health_addr is not None:
            try:
                health_addr = check_listen_address(health_addr)
            except ValueError as exc:
                raise SettingsError(f"invalid DAGWIRE_HEALTH_ADDR={health_addr!r}: {exc}") from None

        def path(name: str) -> Path | None:
            return Path(values[name]) if values[name] else None

        return cls(
            cert=path("DAGWIRE_TLS_CERT"),
            key=path("DAGWIRE_TLS_KEY"),
            client_ca=path("DAGWIRE_TLS_CLIENT_CA"),
            ca=path("DAGWIRE_TLS_CA"),
            server_name=values["DAGWIRE_TLS_SERVER_NAME"] or None,
            client_cert=path("DAGWIRE_TLS_CLIENT_CERT"),
            client_key=path("DAGWIRE_TLS_CLIENT_KEY"),
            health_addr=health_addr,
        )

    @property
    def serves_tls(self) -> bool:
        """Whether a server of this process serves TLS (only)."""
        return self.cert is not None

    @property
    def dials_tls(self) -> bool:
        """Whether this process's client channels use TLS."""
        return self.ca is not None or self.client_cert is not None

    def check(self) -> None:
        """Read and check every file these settings name, as a process does at start-up.

        Raises:
            SettingsError: a file is missing, unreadable or invalid (naming setting and path).
        """
        if self.cert is not None and self.key is not None:
            _ServerCertificates(self.cert, self.key, self.client_ca)
        if self.dials_tls:
            self.channel_credentials()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``: the files now, re-read when they change.

        Raises:
            SettingsError: a file is missing, unreadable or invalid (naming setting and path).
        """
        if self.cert is None or self.key is None:
            raise SettingsError("DAGWIRE_TLS_CERT and DAGWIRE_TLS_KEY are not set")
        certificates = _ServerCertificates(self.cert, self.key, self.client_ca)
        return grpc.dynamic_ssl_server_credentials(
            certificates.initial,
            certificates.fetch,  # type: ignore[arg-type]  # (stubs: None means "unchanged")
            require_client_authentication=self.client_ca is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for a new client channel, from the files as they are now.

        Raises:
            SettingsError: a file is missing, unreadable or invalid (naming setting and path).
        """
        roots = _read_certificates(self.ca, "DAGWIRE_TLS_CA") if self.ca is not None else None
        if self.client_cert is not None and self.client_key is not None:
            identity = (
                (self.client_cert, "DAGWIRE_TLS_CLIENT_CERT"),
                (self.client_key, "DAGWIRE_TLS_CLIENT_KEY"),
            )
        elif self.cert is not None and self.key is not None:
            identity = ((self.cert, "DAGWIRE_TLS_CERT"), (self.key, "DAGWIRE_TLS_KEY"))
        else:
            return grpc.ssl_channel_credentials(roots)
        chain, key = _read_identity(*identity[0], *identity[1])
        return grpc.ssl_channel_credentials(roots, private_key=key, certificate_chain=chain)

    def channel_options(self, target: str) -> list[tuple[str, str]]:
        """Channel arguments for a TLS channel to `target`: the server name override, if any."""
        if self.server_name and target.startswith(_NAMED_TARGET_SCHEMES):
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def _pair(first: Path | None, first_name: str, second: Path | None, second_name: str) -> None:
    if (first is None) != (second is None):
        given, missing = (
            (first_name, second_name) if first is not None else (second_name, first_name)
        )
        raise SettingsError(f"{given} is set but {missing} is not: set both or neither")


_PLAINTEXT = TlsConfig()


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(
            f"cannot read {setting}='{path}': {exc.strerror or exc}".rstrip()
        ) from None


def _read_certificates(path: Path, setting: str) -> bytes:
    """The PEM certificates in `path`, checked to be at least one valid certificate."""
    from cryptography import x509

    data = _read(path, setting)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise SettingsError(
            f"invalid {setting}='{path}': not a PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None
    return data


def _read_identity(
    cert_path: Path, cert_setting: str, key_path: Path, key_setting: str
) -> tuple[bytes, bytes]:
    """``(chain, key)`` from two PEM files, checked: a certificate, a key, and that they match."""
    from cryptography.hazmat.primitives import serialization

    chain = _read_certificates(cert_path, cert_setting)
    key_data = _read(key_path, key_setting)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError) as exc:
        why = "it is encrypted" if isinstance(exc, TypeError) else "not a PEM private key"
        raise SettingsError(f"invalid {key_setting}='{key_path}': {why}") from None
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(chain)[0]
    der = serialization.Encoding.DER
    info = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, info) != leaf.public_key().public_bytes(der, info):
        raise SettingsError(
            f"invalid {key_setting}='{key_path}': it is not the key of the certificate in "
            f"{cert_setting}='{cert_path}'"
        )
    return chain, key_data


def _signature(*paths: Path | None) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when a file is rewritten or replaced: (inode, size, mtime) per path."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        if path is None:
            out.append(None)
            continue
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class _ServerCertificates:
    """A server's certificate files, for gRPC's certificate configuration fetcher.

    gRPC calls `fetch` before each TLS handshake, from its own threads: it returns None while
    the files are unchanged (a ``stat`` of each), else the new configuration; files that
    changed but do not load yet (a rotation half done) keep the previous ones in use.
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._seen = _signature(cert, key, client_ca)
        self.initial = self._load()

    def _load(self) -> grpc.ServerCertificateConfiguration:
        chain, key = _read_identity(self._cert, "DAGWIRE_TLS_CERT", self._key, "DAGWIRE_TLS_KEY")
        roots = None
        if self._client_ca is not None:
            roots = _read_certificates(self._client_ca, "DAGWIRE_TLS_CLIENT_CA")
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        now = _signature(self._cert, self._key, self._client_ca)
        with self._lock:
            if now == self._seen:
                return None
            self._seen = now
            try:
                config = self._load()
            except SettingsError as exc:
                log.warning("TLS certificate files changed but cannot be used yet: %s", exc)
                return None
            except Exception:  # never fail a handshake over a bug here
                log.exception("re-reading the TLS certificate files failed")
                return None
        log.info(
            "TLS certificate files changed: new connections use them",
            extra={
                "cert": str(self._cert),
            },
        )
        return config


def explain_connect_failure(details: str, tls: TlsConfig | None = None) -> str | None:
    """What a failed connection's gRPC details mean in TLS terms, or None when not TLS-related.

    Args:
        details: the details of an UNAVAILABLE status (gRPC's "failed to connect ..." text).
        tls: the client's settings (default: the environment's).

    Returns:
        One short sentence naming TLS and the setting to look at, or None.
    """
    lowered = details.lower()
    if "certificate_verify_failed" in lowered or "unable to get local issuer" in lowered:
        return (
            "TLS: the server's certificate is not signed by the CA this client trusts "
            "(DAGWIRE_TLS_CA)"
        )
    if "hostname verification" in lowered or "no match found for server name" in lowered:
        return (
            "TLS: the server's certificate does not carry the name dialled (set "
            "DAGWIRE_TLS_SERVER_NAME to a name it carries)"
        )
    if "handshake" in lowered or "wrong_version_number" in lowered or "ssl_error" in lowered:
        return "TLS handshake failed (does the server serve TLS?)"
    if "socket closed" in lowered:
        try:
            dials_tls = (tls or TlsConfig.from_env()).dials_tls
        except SettingsError:
            return None
        if dials_tls:
            return (
                "the server closed the connection during the TLS handshake; it may require a "
                "client certificate (DAGWIRE_TLS_CLIENT_CERT) signed by its client CA"
            )
        return "the server closed the connection; if it serves TLS, set DAGWIRE_TLS_CA to its CA"
    return None
