"""The gRPC edge: proto <-> model conversion, status mapping, the shared server foundation."""

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
from dagwire.rpc.settings import (
    AdapterSettings,
    ClientSettings,
    CommonSettings,
    DispatcherSettings,
    OrchestratorSettings,
    SettingsError,
    StorageSettings,
    StoreSettings,
    load_settings,
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
from dagwire.rpc.storage import build_artifact_store, build_execution_store, describe_storage
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore

__all__ = [  # noqa: RUF022  (grouped by topic, as in Temporal's __init__ files)
    # settings
    "AdapterSettings",
    "ClientSettings",
    "CommonSettings",
    "DispatcherSettings",
    "OrchestratorSettings",
    "SettingsError",
    "StorageSettings",
    "StoreSettings",
    "load_settings",
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
    # storage backends and the store service's clients
    "RemoteArtifactStore",
    "RemoteExecutionStore",
    "build_artifact_store",
    "build_execution_store",
    "describe_storage",
]
