"""Where the CLI finds each service: a flag, else its `DAGWIRE_*_ADDR` variable, else loopback.

Defaults and validation come from `dagwire.settings.ClientSettings`, so the CLI and the
services agree on every address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from dagwire.settings import ClientSettings
from dagwire_cli.errors import Target

__all__ = [
    "DISPATCHER",
    "ORCHESTRATOR",
    "STORE",
    "DispatcherOption",
    "ServerOption",
    "ServiceAddress",
    "StoreOption",
    "resolve",
    "target",
]


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """How the CLI names one service's address: its settings field, flag and variable."""

    service: str
    field: str
    flag: str
    env: str

    @property
    def default(self) -> str:
        """The address used when neither the flag nor the variable is given."""
        value: str = ClientSettings.model_fields[self.field].default
        return value

    @property
    def hint(self) -> str:
        """How a user points the CLI elsewhere."""
        return f"pass {self.flag} TARGET (host:port, dns:///name:port, ...) or set {self.env}"


ORCHESTRATOR = ServiceAddress(
    "orchestrator", "orchestrator_addr", "--server", "DAGWIRE_ORCHESTRATOR_ADDR"
)
STORE = ServiceAddress("store", "store_addr", "--store", "DAGWIRE_STORE_ADDR")
DISPATCHER = ServiceAddress(
    "dispatcher", "dispatcher_addr", "--dispatcher", "DAGWIRE_DISPATCHER_ADDR"
)


def _option(address: ServiceAddress) -> Any:
    return typer.Option(
        address.flag,
        envvar=address.env,
        metavar="TARGET",
        help=f"The {address.service} service: host:port, dns:///name:port (every address of "
        "the name) or ipv4:A:PORT,B:PORT (replicas; calls are balanced over them).",
        show_envvar=True,
    )


ServerOption = Annotated[str, _option(ORCHESTRATOR)]
StoreOption = Annotated[str, _option(STORE)]
DispatcherOption = Annotated[str, _option(DISPATCHER)]


def resolve(address: ServiceAddress, value: str) -> str:
    """`value` checked as a gRPC target the way the services check it (`check_target`).

    Raises:
        ValueError: not a target; the one-line message names the flag and the variable.
    """
    defaults = {
        name: info.default
        for name, info in ClientSettings.model_fields.items()
        if name.endswith("_addr")
    }
    try:
        settings = ClientSettings(**{**defaults, address.field: value})
    except ValidationError as exc:
        reasons = "; ".join(
            str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
            if e["loc"] and e["loc"][0] == address.field
        )
        if not reasons:  # only other DAGWIRE_* settings are invalid: not this command's concern
            return value.strip()
        raise ValueError(f"invalid {address.flag} (or {address.env}): {reasons}") from None
    resolved: str = getattr(settings, address.field)
    return resolved


def target(address: ServiceAddress, value: str) -> Target:
    """What error messages say about this service at `value`."""
    return Target(address.service, value, address.hint)
