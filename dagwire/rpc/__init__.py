"""The gRPC edge: proto <-> model conversion, status mapping, the shared server foundation.

Names are imported lazily (PEP 562): a command-line client that needs one gRPC client does not
pay for importing every storage backend and the server machinery at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagwire.rpc.logs import bind, bound, setup_logging
    from dagwire.rpc.serve import (
        ListenError,
        RunningServer,
        Service,
        channel_options,
        create_server,
        insecure_channel,
        run_server,
        serve_main,
        start_server,
    )
    from dagwire.rpc.status import (
        TRACE_ID_KEY,
        InvalidArgumentError,
        RemoteError,
        StatusInterceptor,
        error_from_rpc,
        status_from_error,
        trace_metadata,
    )
    from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore

_LAZY = {
    "bind": "dagwire.rpc.logs",
    "bound": "dagwire.rpc.logs",
    "setup_logging": "dagwire.rpc.logs",
    "ListenError": "dagwire.rpc.serve",
    "RunningServer": "dagwire.rpc.serve",
    "Service": "dagwire.rpc.serve",
    "channel_options": "dagwire.rpc.serve",
    "create_server": "dagwire.rpc.serve",
    "insecure_channel": "dagwire.rpc.serve",
    "run_server": "dagwire.rpc.serve",
    "serve_main": "dagwire.rpc.serve",
    "start_server": "dagwire.rpc.serve",
    "TRACE_ID_KEY": "dagwire.rpc.status",
    "InvalidArgumentError": "dagwire.rpc.status",
    "RemoteError": "dagwire.rpc.status",
    "StatusInterceptor": "dagwire.rpc.status",
    "error_from_rpc": "dagwire.rpc.status",
    "status_from_error": "dagwire.rpc.status",
    "trace_metadata": "dagwire.rpc.status",
    "RemoteArtifactStore": "dagwire.rpc.store_client",
    "RemoteExecutionStore": "dagwire.rpc.store_client",
}


__all__ = [  # noqa: RUF022  (grouped by topic, as in Temporal's __init__ files)
    # logging
    "bind",
    "bound",
    "setup_logging",
    # servers and channels
    "ListenError",
    "RunningServer",
    "Service",
    "channel_options",
    "create_server",
    "insecure_channel",
    "run_server",
    "serve_main",
    "start_server",
    # status mapping
    "TRACE_ID_KEY",
    "InvalidArgumentError",
    "RemoteError",
    "StatusInterceptor",
    "error_from_rpc",
    "status_from_error",
    "trace_metadata",
    # the store service's clients
    "RemoteArtifactStore",
    "RemoteExecutionStore",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
