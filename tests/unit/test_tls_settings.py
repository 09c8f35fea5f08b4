"""The ``DAGWIRE_TLS_*`` settings (dagwire/rpc/tls.py): parsing, and one-line errors naming the
setting and the path for every file that cannot be used (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from dagwire.rpc.tls import TlsConfig, explain_connect_failure
from dagwire.settings import SettingsError
from tests.certs import CertificateAuthority


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


def test_nothing_set_is_plaintext() -> None:
    tls = TlsConfig.from_env({"DAGWIRE_TLS_CERT": " ", "DAGWIRE_LOG_LEVEL": "debug"})
    assert (tls.serves_tls, tls.dials_tls, tls.health_addr) == (False, False, None)
    tls.check()


def test_values_are_read_from_the_environment(tmp_path: Path) -> None:
    tls = TlsConfig.from_env(
        {
            "DAGWIRE_TLS_CA": "/ca.pem",
            "DAGWIRE_TLS_SERVER_NAME": "store.internal",
            "DAGWIRE_HEALTH_ADDR": "0.0.0.0:8081",
        }
    )
    assert tls == TlsConfig(
        ca=Path("/ca.pem"), server_name="store.internal", health_addr="0.0.0.0:8081"
    )
    assert tls.dials_tls and not tls.serves_tls
    assert tls.channel_options("dns:///store:50053") == [
        ("grpc.ssl_target_name_override", "store.internal")
    ]
    assert tls.channel_options("store:50053") == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DAGWIRE_TLS_CERT": "/c.pem"},
            "DAGWIRE_TLS_CERT is set but DAGWIRE_TLS_KEY is not: set both or neither",
        ),
        (
            {"DAGWIRE_TLS_CLIENT_KEY": "/k.pem"},
            "DAGWIRE_TLS_CLIENT_KEY is set but DAGWIRE_TLS_CLIENT_CERT is not: set both or neither",
        ),
        (
            {"DAGWIRE_TLS_CLIENT_CA": "/ca.pem"},
            "DAGWIRE_TLS_CLIENT_CA is set but DAGWIRE_TLS_CERT and DAGWIRE_TLS_KEY are not: a "
            "server checks client certificates only when it serves TLS",
        ),
        (
            {"DAGWIRE_HEALTH_ADDR": "8081"},
            "invalid DAGWIRE_HEALTH_ADDR='8081': '8081' is not host:port (for example "
            "127.0.0.1:50053)",
        ),
    ],
)
def test_incomplete_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        TlsConfig.from_env(env)
    assert str(caught.value) == message


def test_every_unusable_file_names_its_setting_and_path(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    leaf, other = ca.issue("leaf"), ca.issue("other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"

    def error(**settings: Path) -> str:
        with pytest.raises(SettingsError) as caught:
            TlsConfig(**settings).check()  # type: ignore[arg-type]
        return str(caught.value)

    assert error(cert=missing, key=leaf.key) == (
        f"cannot read DAGWIRE_TLS_CERT='{missing}': No such file or directory"
    )
    assert error(cert=garbage, key=leaf.key) == (
        f"invalid DAGWIRE_TLS_CERT='{garbage}': not a PEM certificate (-----BEGIN CERTIFICATE-----)"
    )
    assert error(cert=leaf.cert, key=garbage) == (
        f"invalid DAGWIRE_TLS_KEY='{garbage}': not a PEM private key"
    )
    assert error(cert=leaf.cert, key=other.key) == (
        f"invalid DAGWIRE_TLS_KEY='{other.key}': it is not the key of the certificate in "
        f"DAGWIRE_TLS_CERT='{leaf.cert}'"
    )
    assert error(cert=leaf.cert, key=leaf.key, client_ca=garbage).startswith(
        f"invalid DAGWIRE_TLS_CLIENT_CA='{garbage}'"
    )
    assert error(ca=missing) == f"cannot read DAGWIRE_TLS_CA='{missing}': No such file or directory"
    assert error(ca=ca.cert, client_cert=leaf.cert, client_key=other.key).startswith(
        f"invalid DAGWIRE_TLS_CLIENT_KEY='{other.key}'"
    )
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(leaf.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert error(cert=leaf.cert, key=encrypted) == (
        f"invalid DAGWIRE_TLS_KEY='{encrypted}': it is encrypted"
    )
    TlsConfig(cert=leaf.cert, key=leaf.key, client_ca=ca.cert, ca=ca.cert).check()


def test_connect_failures_are_explained_in_tls_terms() -> None:
    verify = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls "
        "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
        "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
    )
    assert explain_connect_failure(verify) == (
        "TLS: the server's certificate is not signed by the CA this client trusts (DAGWIRE_TLS_CA)"
    )
    closed = "connections to all backends failing; last error: UNAVAILABLE: ipv4:x:1: Socket closed"
    assert "set DAGWIRE_TLS_CA" in str(explain_connect_failure(closed, TlsConfig()))
    assert "DAGWIRE_TLS_CLIENT_CERT" in str(
        explain_connect_failure(closed, TlsConfig(ca=Path("/ca.pem")))
    )
    assert explain_connect_failure("failed to connect; Connection refused") is None
