"""Typed `DAGWIRE_*` settings per process: flags win over environment variables over defaults."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dagwire.errors import DagwireError
from dagwire.limits import DEFAULT_MAX_MESSAGE_BYTES

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PORTS",
    "AdapterSettings",
    "ClientSettings",
    "CommonSettings",
    "DispatcherSettings",
    "OrchestratorSettings",
    "SettingsError",
    "StorageSettings",
    "StoreSettings",
    "check_listen_address",
    "check_target",
    "keep_secret",
    "load_settings",
    "process_settings",
    "redact",
    "settings_parser",
]

ENV_PREFIX = "DAGWIRE_"
DEFAULT_PORTS = {"orchestrator": 50051, "dispatcher": 50052, "store": 50053, "adapter": 50060}

S = TypeVar("S", bound="CommonSettings")

_CREDENTIALS = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
"""The password in a URI's ``user:password@``."""
_SECRET_OPTION_NAMES = (
    "password",
    "authMechanismProperties",
    "tlsCertificateKeyFilePassword",
    "sslPEMKeyPassword",
    "secret_key",
    "secretKey",
    "access_key",
    "accessKey",
    "session_token",
    "sessionToken",
)
"""URI options (MongoDB's, and the S3 names) whose values are credentials."""
_SECRET_OPTION = re.compile(
    r"(?i)(\b(?:" + "|".join(_SECRET_OPTION_NAMES) + r")['\"]?\s*[=:]\s*['\"]?)[^&;,\s'\"}]+"
)
"""``password=...`` in a URI's options, and ``'password': '...'`` in a dict a library printed."""
_MIN_SECRET_CHARS = 4
"""Shorter known secrets are not masked in free text (they would mask ordinary words); URI
passwords and secret options are masked whatever their length."""
_known_secrets: set[str] = set()
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")


class SettingsError(DagwireError, ValueError):
    """A setting has an invalid value; the message is one line naming the variable (and flag)."""


def _address(value: object, *, allow_port_zero: bool) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a host:port string")
    value = value.strip()
    if value.startswith("unix:"):
        return value
    match = _HOST_PORT.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not host:port (for example 127.0.0.1:50053)")
    port = int(match["port"])
    if port > 65535 or (port == 0 and not allow_port_zero):
        raise ValueError(f"{value!r}: port must be 1-65535")
    return value


_IPV4 = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
_TARGET_HINT = "host:port, dns:///name:port or ipv4:A:PORT,B:PORT"


def _port_of(text: str, value: str) -> None:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r}: port must be 1-65535")


def check_target(value: object) -> str:
    """`value` checked as a gRPC target a dagwire client may dial (see docs/targets.md).

    Accepted: ``host:port`` (one address, resolved by DNS as gRPC does), ``dns:///name:port``
    (or ``dns://authority/name:port``: every address of the name, re-resolved when
    connections fail) and ``ipv4:A:PORT,B:PORT`` / ``ipv6:[A]:PORT,...`` (a fixed list);
    ``unix:`` paths pass unchanged.

    Returns:
        The target, stripped.

    Raises:
        ValueError: `value` is none of these; the message quotes it and gives the forms.
    """
    if not isinstance(value, str):
        raise ValueError(f"must be a gRPC target ({_TARGET_HINT})")
    value = value.strip()
    if value.startswith("unix:"):
        return value
    if value.startswith("dns:"):
        rest = value.removeprefix("dns:")
        if rest.startswith("//"):
            _authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise ValueError(f"{value!r} is not dns:///name:port (for example {_DNS_EXAMPLE})")
        match = _HOST_PORT.match(rest)
        if match is None or match["host"].startswith("["):
            raise ValueError(
                f"{value!r} is not dns:///name:port (the port is required; for example "
                f"{_DNS_EXAMPLE})"
            )
        _port_of(match["port"], value)
        return value
    for scheme in ("ipv4:", "ipv6:"):
        if value.startswith(scheme):
            items = value.removeprefix(scheme).split(",")
            for item in items:
                _ip_address(item.strip(), scheme, value)
            return value
    if "://" in value:
        raise ValueError(f"{value!r} is not a gRPC target ({_TARGET_HINT})")
    match = _HOST_PORT.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not host:port (for example 127.0.0.1:50053), dns:///name:port or "
            "ipv4:A:PORT,B:PORT"
        )
    _port_of(match["port"], value)
    return value


_DNS_EXAMPLE = "dns:///dagwire-store.default.svc.cluster.local:50053"


def _ip_address(item: str, scheme: str, value: str) -> None:
    """One ``A:PORT`` of an ``ipv4:`` list (``[A]:PORT`` of an ``ipv6:`` list), else raise."""
    host, sep, port = item.rpartition(":")
    ok = bool(sep) and port.isdigit()
    if ok and scheme == "ipv4:":
        octets = _IPV4.match(host)
        ok = octets is not None and all(int(o) <= 255 for o in octets.groups())
    elif ok:
        ok = host.startswith("[") and host.endswith("]") and ":" in host
    if not ok:
        example = (
            "ipv4:10.0.0.5:50051,10.0.0.6:50051"
            if scheme == "ipv4:"
            else ("ipv6:[::1]:50051,[::2]:50051")
        )
        raise ValueError(
            f"{value!r}: {item!r} is not an {scheme[:-1]} address with a port (for example "
            f"{example})"
        )
    _port_of(port, value)


def check_listen_address(value: object) -> str:
    """`value` checked as an address a server binds: ``host:port`` (port 0: any free one).

    Raises:
        ValueError: it is not ``host:port``; the message quotes it.
    """
    return _address(value, allow_port_zero=True)


_listen_address = check_listen_address


def _peer_address(value: object) -> str:
    return _address(value, allow_port_zero=False)


def _optional_peer_address(value: object) -> str | None:
    if value in (None, ""):
        return None
    return _peer_address(value)


def _peer_target(value: object) -> str:
    return check_target(value)


def _optional_peer_target(value: object) -> str | None:
    if value in (None, ""):
        return None
    return _peer_target(value)


def _static_adapters(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, tuple | list):
        return tuple((str(k), _peer_address(a)) for k, a in value)
    if not isinstance(value, str):
        raise ValueError("must be key=host:port,... text")
    pairs = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, sep, address = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not key=host:port")
        pairs.append((key.strip(), _peer_address(address.strip())))
    return tuple(pairs)


def _log_level(value: object) -> str:
    text = str(value).strip().lower()
    if text not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError(f"{value!r} is not one of debug, info, warning, error, critical")
    return text


ListenAddress = Annotated[str, BeforeValidator(_listen_address)]
#: A service other processes call: any gRPC target (`check_target`), for replicated services.
PeerTarget = Annotated[str, BeforeValidator(_peer_target)]
OptionalPeerAddress = Annotated[str | None, BeforeValidator(_optional_peer_address)]
OptionalPeerTarget = Annotated[str | None, BeforeValidator(_optional_peer_target)]
StaticAdapters = Annotated[tuple[tuple[str, str], ...], NoDecode, BeforeValidator(_static_adapters)]
LogLevel = Annotated[str, BeforeValidator(_log_level)]


class CommonSettings(BaseSettings):
    """Settings every process has: logging and the gRPC message size limit."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, validate_default=True
    )

    log_level: LogLevel = Field("info", description="log level: debug, info, warning, error")
    log_format: Literal["json", "text"] | None = Field(
        None, description="log format on stderr: json or text (default: text on a TTY, else json)"
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=4096,
        le=2**31 - 1,
        description="gRPC send/receive message size limit in bytes",
    )

    def safe_dict(self) -> dict[str, Any]:
        """The effective settings for logging: secrets masked, credentials cut from URIs.

        Returns:
            Field name -> JSON-safe value; a set secret shows as ``"***"``.
        """
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) or (name in _MASKED_FIELDS and value):
                value = "***" if _plain(value) else ""
            elif isinstance(value, str):
                value = redact(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[name] = value
        return out


class StorageSettings(CommonSettings):
    """Which artifact and execution store backends a process uses (embedded by default)."""

    data_dir: Path = Field(Path(".dagwire"), description="embedded storage directory")
    mongodb_uri: str | None = Field(
        None, description="execution store on MongoDB (unset: embedded SQLite under data-dir)"
    )
    s3_endpoint: str | None = Field(
        None,
        description="artifact store on S3/MinIO, host:port or http(s)://host:port "
        "(unset: local files under data-dir)",
    )
    s3_access_key: str | None = Field(None, description="S3 access key")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key")
    s3_bucket: str = Field("dagwire-artifacts", min_length=3, description="S3 bucket name")

    def model_post_init(self, context: Any, /) -> None:
        """Remember the credentials these settings hold, so that `redact` masks them in every
        log line and error message of this process."""
        secret = self.s3_secret_key.get_secret_value() if self.s3_secret_key else None
        keep_secret(self.s3_access_key, secret, *_uri_secrets(self.mongodb_uri or ""))


class StoreSettings(StorageSettings):
    """The store service: where it listens and which backends it serves."""

    listen_addr: ListenAddress = Field(
        f"127.0.0.1:{DEFAULT_PORTS['store']}", description="address the store service listens on"
    )


class DispatcherSettings(CommonSettings):
    """The dispatcher service."""

    listen_addr: ListenAddress = Field(
        f"127.0.0.1:{DEFAULT_PORTS['dispatcher']}", description="address the dispatcher listens on"
    )
    static_adapters: StaticAdapters = Field(
        (), description="key=host:port,... adapter registrations that need no heartbeat"
    )
    lease_seconds: float = Field(
        10.0, gt=0, description="adapter registration lease (heartbeat at a third of it)"
    )
    store_addr: OptionalPeerTarget = Field(
        None,
        description="store service keeping the adapter registry that dispatcher replicas "
        "share (docs/registry.md); unset: the registry lives in this process only",
    )
    registry_refresh_seconds: float = Field(
        0.5,
        gt=0,
        le=5,
        description="how often a replica refreshes its view of the shared adapter registry",
    )


class OrchestratorSettings(CommonSettings):
    """The orchestrator service: where it listens, its peers, run ownership and shutdown."""

    listen_addr: ListenAddress = Field(
        f"127.0.0.1:{DEFAULT_PORTS['orchestrator']}",
        description="address the orchestrator listens on",
    )
    dispatcher_addr: PeerTarget = Field(
        f"127.0.0.1:{DEFAULT_PORTS['dispatcher']}",
        description="dispatcher service target (host:port, dns:///name:port or ipv4:A:P,B:P)",
    )
    store_addr: PeerTarget = Field(
        f"127.0.0.1:{DEFAULT_PORTS['store']}",
        description="store service target (host:port, dns:///name:port or ipv4:A:P,B:P)",
    )
    lease_seconds: float = Field(
        10.0,
        gt=0,
        description="how long this orchestrator's claim on a run lasts unless renewed (renewed "
        "every third of it); a live orchestrator adopts and resumes the runs whose owner's "
        "lease lapsed",
    )
    store_retry_seconds: float = Field(
        300.0,
        gt=0,
        description="how long writes to an unavailable store are retried before a run fails "
        "with 'store unavailable'",
    )
    grace_seconds: float = Field(
        10.0,
        ge=0,
        description="on SIGTERM, how long running workflows get to finish before they are "
        "cancelled (or handed over, see on_stop)",
    )
    on_stop: Literal["cancel", "hand-over"] = Field(
        "cancel",
        description="what happens on SIGTERM to the runs still going after the grace period: "
        "cancel them, or hand them over to the other replicas (their lease is written as "
        "lapsed; another orchestrator adopts and resumes them); hand-over suits replicas",
    )
    instance_id: str | None = Field(
        None,
        min_length=1,
        description="this orchestrator's identity as the owner of its runs (default: a fresh "
        "one at each start); with a stable id, its own runs left running are resumed at once "
        "after a restart",
    )
    secrets_dir: Path | None = Field(
        None,
        description="where ${secret.NAME} values are read at dispatch: one file per secret, "
        "DIR/<namespace>/NAME, as a Kubernetes secret volume mounts them (docs/security.md); "
        "unset: a spec that uses a secret is invalid",
    )
    profile_file: Path | None = Field(
        None, description="write a cProfile of the event loop thread here on exit (measurement)"
    )


class AdapterSettings(CommonSettings):
    """An adapter process: where it listens, the address it registers, its dispatcher."""

    listen_addr: ListenAddress = Field(
        f"127.0.0.1:{DEFAULT_PORTS['adapter']}", description="address the adapter listens on"
    )
    advertise_addr: OptionalPeerAddress = Field(
        None, description="address registered with the dispatcher (default: the listen address)"
    )
    dispatcher_addr: PeerTarget = Field(
        f"127.0.0.1:{DEFAULT_PORTS['dispatcher']}",
        description="dispatcher service target (host:port, dns:///name:port or ipv4:A:P,B:P)",
    )
    store_addr: PeerTarget = Field(
        f"127.0.0.1:{DEFAULT_PORTS['store']}",
        description="store service target (host:port, dns:///name:port or ipv4:A:P,B:P)",
    )
    lease_seconds: float = Field(10.0, gt=0, description="registration lease in seconds")


class ClientSettings(CommonSettings):
    """What a client (the CLI) needs: where each service is."""

    orchestrator_addr: PeerTarget = Field(
        f"127.0.0.1:{DEFAULT_PORTS['orchestrator']}",
        description="orchestrator service target (host:port, dns:///name:port or ipv4:A:P,B:P)",
    )
    dispatcher_addr: PeerTarget = Field(
        f"127.0.0.1:{DEFAULT_PORTS['dispatcher']}",
        description="dispatcher service target (host:port, dns:///name:port or ipv4:A:P,B:P)",
    )
    store_addr: PeerTarget = Field(
        f"127.0.0.1:{DEFAULT_PORTS['store']}",
        description="store service target (host:port, dns:///name:port or ipv4:A:P,B:P)",
    )


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def settings_parser(
    cls: type[CommonSettings], *, prog: str | None = None, description: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per settings field (env var and default in help).

    Args:
        cls: the settings class.
        prog: program name shown in usage.
        description: text shown above the options.

    Returns:
        A parser whose options default to "not given" (so the environment applies).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Every option defaults to its DAGWIRE_* environment variable, then to the "
        "default shown.",
    )
    for name, info in cls.model_fields.items():
        parser.add_argument(
            _flag(name),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.upper(),
            help=f"{info.description or name} [env {_env_name(name)}; "
            f"default: {_default_text(info)}]",
        )
    return parser


def _default_text(info: FieldInfo) -> str:
    default = info.get_default(call_default_factory=True)
    if default is None or default == ():
        return "unset"
    return str(default)


def load_settings(
    cls: type[S],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
) -> S:
    """Build the settings of a process from flags (first), ``DAGWIRE_*`` variables, defaults.

    Args:
        cls: the settings class of the process.
        argv: command-line arguments (without the program name); None reads none.
        prog: program name for ``--help``.
        description: description for ``--help``.

    Returns:
        The validated, frozen settings.

    Raises:
        SettingsError: a value is invalid; the one-line message names the variable and flag.
        SystemExit: ``--help`` was given, or an unknown flag (argparse's own exit).
    """
    parser = settings_parser(cls, prog=prog, description=description)
    given = vars(parser.parse_args(list(argv or [])))
    try:
        return cls(**given)
    except ValidationError as exc:
        raise _settings_error(exc, given) from None


def process_settings(
    cls: type[S], argv: Sequence[str] | None, *, prog: str, description: str
) -> S | None:
    """A server process's settings from its command line (`sys.argv` when `argv` is None).

    An invalid value is reported as one line on stderr (``prog: error: ...``) and gives None,
    so every ``main()`` exits 2 the same way.
    """
    import sys

    try:
        return load_settings(
            cls, sys.argv[1:] if argv is None else argv, prog=prog, description=description
        )
    except SettingsError as exc:
        sys.stderr.write(f"{prog}: error: {redact(str(exc))}\n")
        return None


def _settings_error(exc: ValidationError, given: dict[str, Any]) -> SettingsError:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        source = f"{_flag(field)}" if field in given else _env_name(field)
        value = error.get("input")
        message = str(error["msg"]).removeprefix("Value error, ")
        shown = "" if "secret" in field or field in _MASKED_FIELDS else f"={redact(repr(value))}"
        problems.append(f"invalid {source}{shown}: {message}")
    return SettingsError("; ".join(problems))


_MASKED_FIELDS = frozenset({"s3_access_key"})
"""Plain `str` settings that are credentials all the same: logged as ``***``."""


def _plain(value: object) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value or "")


def keep_secret(*values: str | None) -> None:
    """Remember credentials of this process (as given, and percent-encoded or -decoded), so
    that `redact` masks them wherever they appear. Settings call it for their own."""
    for value in values:
        if value and len(value) >= _MIN_SECRET_CHARS:
            _known_secrets.update({value, quote(value, safe=""), unquote(value)})


def _uri_secrets(uri: str) -> Iterator[str]:
    """The credentials inside a URI: the password of its userinfo and the values of its
    secret options (each part of ``authMechanismProperties=NAME:VALUE,...`` too)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        yield userinfo.partition(":")[2]
    names = {name.lower() for name in _SECRET_OPTION_NAMES}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in names:
            yield value
            yield from (item.partition(":")[2] for item in value.split(","))


def redact(text: str) -> str:
    """`text` with every credential masked as ``***``: URI passwords (``user:***@``), secret
    URI options (``password=***``, ``authMechanismProperties=***``), and the credentials the
    process's settings hold wherever they appear (`keep_secret`). Every log line and every
    start-up error of a service, and every message of the CLI, passes through it."""
    text = _CREDENTIALS.sub(r"\1***@", text)
    text = _SECRET_OPTION.sub(r"\1***", text)
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text
