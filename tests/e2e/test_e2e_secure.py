"""`dagwire up --secure` (docs/security.md): a development CA, certificates and principals under
DIR/secure/, every process on TLS, mTLS and tokens, and a client.env that a shell sources to
run a workflow; a second start reuses the folder, principals added to its auth file included."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tests.e2e.harness import (
    COMMAND_TIMEOUT,
    EXAMPLES,
    READY,
    UpProcess,
    clean_env,
    dagwire_executable,
    free_port_base,
    run_cli,
    start_up,
)


def _sourced(client_env: Path) -> dict[str, str]:
    """The variables a shell gets from `source client.env`."""
    out = {}
    for line in client_env.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            (out[key],) = shlex.split(value)
    return out


def _up_secure(data_dir: Path, base: int) -> UpProcess:
    up = start_up(data_dir, port_base=base, args=["--secure"])
    try:
        line = up.read_until(READY)
    except BaseException:
        up.stop()
        raise
    assert "TLS, mTLS and tokens on" in line and "client.env" in line
    return up


def test_up_secure_serves_a_shell_that_sources_client_env_and_refuses_everyone_else(
    tmp_path: Path,
) -> None:
    base = free_port_base()
    data_dir = tmp_path / "data"
    secure = data_dir / "secure"
    up = _up_secure(data_dir, base)
    try:
        dagwire = " ".join(shlex.quote(part) for part in dagwire_executable())
        script = (
            f"source {shlex.quote(str(secure / 'client.env'))} && "
            f"{dagwire} run {shlex.quote(str(EXAMPLES / 'hello.yaml'))} --output json"
        )
        shell = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert shell.returncode == 0, shell.stderr
        assert '"status": "succeeded"' in shell.stdout
        client = _sourced(secure / "client.env")
        assert set(client) >= {
            "DAGWIRE_TLS_CA",
            "DAGWIRE_TLS_CLIENT_CERT",
            "DAGWIRE_TLS_CLIENT_KEY",
            "DAGWIRE_TOKEN",
        }
        no_token = run_cli("runs", env={k: v for k, v in client.items() if k != "DAGWIRE_TOKEN"})
        assert no_token.returncode == 4, no_token
        plaintext = run_cli(
            "runs", env={k: v for k, v in client.items() if not k.startswith("DAGWIRE_TLS")}
        )
        assert plaintext.returncode == 3, plaintext
        # the auth file keeps hashes only; keys are private
        assert client["DAGWIRE_TOKEN"] not in (secure / "auth.yaml").read_text()
        for private in ("ca.key", "client.key", "grant.key", "auth.yaml", "tokens/admin.token"):
            assert (secure / private).stat().st_mode & 0o077 == 0, private
        added = run_cli(
            "auth", "add", "--file", secure / "auth.yaml", "--name", "late", "--role", "client"
        )
        assert added.returncode == 0, added
        late_token = added.stdout.strip()
    finally:
        assert up.stop() == 0, up.stderr
    ca = (secure / "ca.pem").read_bytes()
    up = _up_secure(data_dir, base)
    try:
        assert (secure / "ca.pem").read_bytes() == ca
        assert _sourced(secure / "client.env") == client
        listed = run_cli("runs", env=client | {"DAGWIRE_TOKEN": late_token})
        assert listed.returncode == 0, listed
        assert "hello" in listed.stdout
    finally:
        up.stop()
