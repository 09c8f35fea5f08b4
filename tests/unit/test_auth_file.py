"""The auth file (docs/security.md): parsing with errors that name the entry, tokens kept as
hashes only, re-reading on change while a broken edit keeps the principals in force, and the
client's token from the environment."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from dagwire.auth import AuthFile, Role, add_principal, load_principals, token_from_env
from dagwire.settings import SettingsError

DIGEST = "a" * 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("principals: 3", "principals must be a list"),
        ("users: []", "one key, principals"),
        ("principals: [{name: x, roles: [client]}]", "needs token_sha256 or tls_names"),
        (
            f"principals: [{{name: x, roles: [owner], token_sha256: '{DIGEST}'}}]",
            "principals[0] ('x').roles: unknown role 'owner'",
        ),
        (
            "principals: [{name: x, roles: [client], token_sha256: 'abc'}]",
            "token_sha256 must be 64 hex digits",
        ),
        (
            f"principals: [{{name: x, roles: [client], token_sha256: '{DIGEST}', "
            "namespaces: [Team_A]}]",
            "'Team_A' is not a valid namespace",
        ),
        (
            f"principals: [{{name: x, roles: [client], token_sha256: '{DIGEST}', token: t}}]",
            "unknown keys ['token']",
        ),
        (
            f"principals: [{{name: x, roles: [client], token_sha256: '{DIGEST}'}}, "
            f"{{name: x, roles: [admin], token_sha256: '{'b' * 64}'}}]",
            "'x' is listed twice",
        ),
        ("principals: [\n  {name: x", "line "),
    ],
)
def test_an_invalid_auth_file_names_the_entry_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_principals(text)


def test_add_principal_keeps_only_the_tokens_hash_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.yaml"
    token = add_principal(path, name="ci", roles=["client"], namespaces=["team-a"])
    other = add_principal(path, name="toolbox", roles=["adapter"], agents=["echo"])
    text = path.read_text()
    assert token not in text and other not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    auth = AuthFile(path)
    ci = auth.by_token(token)
    assert ci is not None and ci.name == "ci" and ci.roles == {Role.CLIENT}
    assert ci.namespaces == ("team-a",) and ci.sees_namespace("team-a")
    assert not ci.sees_namespace("default")
    toolbox = auth.by_token(other)
    assert toolbox is not None and toolbox.may_serve("echo") and not toolbox.may_serve("upper")
    assert auth.by_token("dgw_" + "x" * 40) is None
    with pytest.raises(ValueError, match="already in the file"):
        add_principal(path, name="ci", roles=["client"])


def test_a_changed_file_is_re_read_and_a_broken_edit_keeps_the_principals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "auth.yaml"
    first = add_principal(path, name="first", roles=["client"])
    auth = AuthFile(path, reload_interval=0.0)
    second = add_principal(path, name="second", roles=["admin"])
    found = auth.by_token(second)
    assert found is not None and found.is_admin
    good = path.read_text()
    path.write_text(good + "  - {name: broken\n")
    assert auth.by_token(first) is not None  # still in force
    assert "cannot be used" in caplog.text
    path.write_text(good.replace("first", "renamed"))
    found = auth.by_token(first)
    assert found is not None and found.name == "renamed"


def test_a_missing_or_invalid_auth_file_is_a_settings_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"DAGWIRE_AUTH_FILE='.*nope.yaml': No such file"):
        AuthFile(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("principals: nope")
    with pytest.raises(SettingsError, match="principals must be a list"):
        AuthFile(bad)


def test_the_token_comes_from_the_environment_or_its_file(tmp_path: Path) -> None:
    assert token_from_env({}) is None
    assert token_from_env({"DAGWIRE_TOKEN": " dgw_0123456789abcdef "}) == "dgw_0123456789abcdef"
    path = tmp_path / "token"
    path.write_text("dgw_from-the-file-0123\n")
    assert token_from_env({"DAGWIRE_TOKEN_FILE": str(path)}) == "dgw_from-the-file-0123"
    with pytest.raises(SettingsError, match="cannot read DAGWIRE_TOKEN_FILE"):
        token_from_env({"DAGWIRE_TOKEN_FILE": str(tmp_path / "none")})
    with pytest.raises(SettingsError, match="not a dagwire token"):
        token_from_env({"DAGWIRE_TOKEN": "two words here!!"})
