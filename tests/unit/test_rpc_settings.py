"""`DAGWIRE_*` settings: defaults, environment, flags over environment, one-line errors, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagwire.settings import (
    AdapterSettings,
    ClientSettings,
    DispatcherSettings,
    OrchestratorSettings,
    SettingsError,
    StoreSettings,
    load_settings,
    settings_parser,
)
from dagwire.stores.factory import build_artifact_store, build_execution_store, describe_storage
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DAGWIRE_"):
            monkeypatch.delenv(name)


def test_defaults_are_loopback_with_each_services_port() -> None:
    assert load_settings(StoreSettings).listen_addr == "127.0.0.1:50053"
    assert load_settings(DispatcherSettings).listen_addr == "127.0.0.1:50052"
    assert load_settings(OrchestratorSettings).listen_addr == "127.0.0.1:50051"
    client = load_settings(ClientSettings)
    assert (client.orchestrator_addr, client.dispatcher_addr, client.store_addr) == (
        "127.0.0.1:50051",
        "127.0.0.1:50052",
        "127.0.0.1:50053",
    )
    store = load_settings(StoreSettings)
    assert (store.max_message_bytes, store.log_level, store.log_format) == (16 << 20, "info", None)
    assert (store.data_dir, store.mongodb_uri, store.s3_bucket) == (
        Path(".dagwire"),
        None,
        "dagwire-artifacts",
    )
    assert load_settings(DispatcherSettings).lease_seconds == 10


def test_environment_sets_values_and_flags_override_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGWIRE_LISTEN_ADDR", "0.0.0.0:6000")
    monkeypatch.setenv("DAGWIRE_LOG_LEVEL", "DEBUG")
    settings = load_settings(StoreSettings, ["--listen-addr", "127.0.0.1:7000"])
    assert settings.listen_addr == "127.0.0.1:7000"
    assert settings.log_level == "debug"


def test_invalid_environment_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAGWIRE_MAX_MESSAGE_BYTES", "lots")
    with pytest.raises(SettingsError) as caught:
        load_settings(StoreSettings)
    message = str(caught.value)
    assert message.startswith("invalid DAGWIRE_MAX_MESSAGE_BYTES='lots': ")
    assert "\n" not in message


def test_invalid_flag_value_names_the_flag() -> None:
    with pytest.raises(
        SettingsError, match=r"^invalid --listen-addr='nowhere': 'nowhere' is not host:port"
    ):
        load_settings(StoreSettings, ["--listen-addr", "nowhere"])


def test_peer_address_port_zero_is_refused_but_listen_port_zero_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(StoreSettings, ["--listen-addr", "127.0.0.1:0"]).listen_addr.endswith(":0")
    monkeypatch.setenv("DAGWIRE_STORE_ADDR", "127.0.0.1:0")
    with pytest.raises(SettingsError, match=r"DAGWIRE_STORE_ADDR.*port must be 1-65535"):
        load_settings(OrchestratorSettings)


def test_static_adapters_parse_key_equals_address_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGWIRE_STATIC_ADAPTERS", "echo=127.0.0.1:50060, upper=127.0.0.1:50061")
    settings = load_settings(DispatcherSettings)
    assert settings.static_adapters == (("echo", "127.0.0.1:50060"), ("upper", "127.0.0.1:50061"))
    monkeypatch.setenv("DAGWIRE_STATIC_ADAPTERS", "echo")
    with pytest.raises(
        SettingsError, match=r"DAGWIRE_STATIC_ADAPTERS.*'echo' is not key=host:port"
    ):
        load_settings(DispatcherSettings)


def test_advertise_addr_defaults_to_unset() -> None:
    assert load_settings(AdapterSettings).advertise_addr is None


def test_safe_dict_masks_the_secret_key_and_uri_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGWIRE_S3_SECRET_KEY", "hunter22")
    monkeypatch.setenv("DAGWIRE_MONGODB_URI", "mongodb://user:pa55@db:27017/?tls=true")
    safe = load_settings(StoreSettings).safe_dict()
    assert safe["s3_secret_key"] == "***"
    assert safe["mongodb_uri"] == "mongodb://user:***@db:27017/?tls=true"
    assert "hunter22" not in repr(safe) and "pa55" not in repr(safe)


def test_too_short_bucket_name_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAGWIRE_S3_BUCKET", "x")
    with pytest.raises(SettingsError, match="DAGWIRE_S3_BUCKET"):
        load_settings(StoreSettings)


def test_help_lists_each_flag_with_its_variable_and_default() -> None:
    text = settings_parser(StoreSettings, prog="dagwire-store").format_help()
    assert "--listen-addr" in text and "DAGWIRE_LISTEN_ADDR" in text
    assert "default: 127.0.0.1:50053" in text
    assert "--s3-secret-key" in text


def test_storage_defaults_to_embedded_backends_under_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(StoreSettings, ["--data-dir", str(tmp_path)])
    assert isinstance(build_artifact_store(settings), LocalArtifactStore)
    assert isinstance(build_execution_store(settings), SqliteExecutionStore)
    assert describe_storage(settings) == {
        "artifact_store": f"local {tmp_path / 'artifacts'}",
        "execution_store": f"sqlite {tmp_path / 'executions.sqlite3'}",
    }


def test_s3_endpoint_without_keys_is_an_error_naming_the_missing_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAGWIRE_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("DAGWIRE_S3_ACCESS_KEY", "key")
    with pytest.raises(SettingsError, match="set DAGWIRE_S3_SECRET_KEY too"):
        build_artifact_store(load_settings(StoreSettings))
