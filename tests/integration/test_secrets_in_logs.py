"""Credentials never reach a log or an error message in clear: a store service started with a
MongoDB URI that carries a password (in its userinfo and in its options) and an S3 access and
secret key, as separate processes, logs and reports them only as ``***``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dagwire.errors import StoreUnavailableError
from dagwire.rpc.store_client import RemoteExecutionStore
from dagwire.settings import StorageSettings, redact
from tests.servers import find_free_port
from tests.stack import Proc, free_address

PASSWORD = "pa55-W0rd-userinfo"
OPTION_SECRET = "opt-S3cret-token"
ACCESS_KEY = "AKIA-ACCESS-KEY-1234"
SECRET_KEY = "s3-SECRET-key-abcd"
SECRETS = (PASSWORD, OPTION_SECRET, ACCESS_KEY, SECRET_KEY)


def _uri(port: int, options: str) -> str:
    return f"mongodb://dagwire:{PASSWORD}@127.0.0.1:{port}/dagwire?{options}"


def _store(tmp: Path, name: str, uri: str) -> Proc:
    address = free_address()
    return Proc(
        name,
        ["dagwire_services.store", "--listen-addr", address, "--data-dir", str(tmp / name)],
        address,
        tmp / f"{name}.log",
        env={
            "DAGWIRE_MONGODB_URI": uri,
            "DAGWIRE_S3_ENDPOINT": f"http://127.0.0.1:{find_free_port()}",
            "DAGWIRE_S3_ACCESS_KEY": ACCESS_KEY,
            "DAGWIRE_S3_SECRET_KEY": SECRET_KEY,
            "DAGWIRE_LOG_LEVEL": "debug",
        },
    )


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


async def test_a_store_service_logs_its_settings_and_failures_without_credentials(
    tmp_path: Path,
) -> None:
    # The database is down (a closed port): start-up logs the settings, a call fails.
    options = (
        f"authMechanismProperties=AWS_SESSION_TOKEN:{OPTION_SECRET}&serverSelectionTimeoutMS=300"
    )
    proc = _store(tmp_path, "store", _uri(find_free_port(), options))
    proc.start()
    try:
        await proc.wait_serving()
        client = RemoteExecutionStore(proc.address)
        try:
            with pytest.raises(StoreUnavailableError) as failed:
                await asyncio.wait_for(client.get_run("run-1"), 30)
        finally:
            await client.aclose()
        _assert_no_secret(str(failed.value))
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    _assert_no_secret(log)
    started = next(line for line in proc.log_lines() if "serving on" in line["message"])
    assert started["settings"]["s3_access_key"] == "***"
    assert started["settings"]["s3_secret_key"] == "***"
    assert "dagwire:***@" in started["settings"]["mongodb_uri"]


def test_a_store_service_refusing_its_settings_does_not_echo_the_credentials(
    tmp_path: Path,
) -> None:
    # An S3 endpoint with credentials in it is refused with a message that quotes it, and the
    # MongoDB URI carries an unknown password option: whatever the process reports on its way
    # out (one line, a log record) must not carry the secrets.
    uri = _uri(find_free_port(), f"password={OPTION_SECRET}")
    proc = _store(tmp_path, "refused", uri)
    proc.env["DAGWIRE_S3_ENDPOINT"] = f"http://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:1"
    proc.start()
    assert proc.popen is not None
    proc.popen.wait(30)
    proc.stop()
    log = proc.log_path.read_text()
    assert proc.popen.returncode != 0, log
    assert "without credentials" in log, log  # the refusal was reported
    _assert_no_secret(log)


def test_redact_masks_uri_passwords_options_and_known_secrets() -> None:
    settings = StorageSettings(
        mongodb_uri=_uri(1, f"authMechanismProperties=AWS_SESSION_TOKEN:{OPTION_SECRET}"),
        s3_endpoint="http://127.0.0.1:1",
        s3_access_key=ACCESS_KEY,
        s3_secret_key=SECRET_KEY,  # type: ignore[arg-type]
    )
    assert settings.s3_access_key == ACCESS_KEY
    text = redact(
        f"failed: mongodb://u:{PASSWORD}@h:1/?password={OPTION_SECRET}&w=1 "
        f"key {ACCESS_KEY} secret {SECRET_KEY} {{'password': '{PASSWORD}'}}"
    )
    _assert_no_secret(text)
    assert "mongodb://u:***@h:1/?password=***&w=1" in text
