"""The one place client channels are built: targets, round-robin balancing, safe retries.

Every dagwire client (the CLI, the library's clients, each service's clients of its peers)
opens its channels here, so they all accept the same targets (`check_target`: ``host:port``,
``dns:///name:port``, ``ipv4:A:P,B:P``), spread their calls round-robin over every address the
target resolves to, and retry a call that failed with UNAVAILABLE (a replica died, or was not
reachable) on another replica, but only for the methods below, whose repetition cannot change
the outcome. docs/targets.md describes the behaviour for users. A channel is plaintext unless
the ``DAGWIRE_TLS_*`` settings ask for TLS (`dagwire.rpc.tls`, docs/security.md).

Methods retried on UNAVAILABLE (`RETRY_SAFE_METHODS`), and why each is safe to repeat:

- ``OrchestratorService``: ``GetRun``, ``ListRuns`` and ``WatchRun`` read (a stream is retried
  only before its first event; later breaks are the client's reconnect, see
  `OrchestratorClient.watch_run`); ``StartRun`` and ``RunWorkflow`` are idempotent by their
  ``request_id`` (`OrchestratorClient` always sends one, so a repeat finds the run the first
  attempt created); ``CancelRun`` of a cancelled run is accepted.
- ``DispatcherService``: ``ListAdapters`` reads; ``RegisterAdapter`` and ``Heartbeat`` set the
  same registration again; ``DeregisterAdapter`` of an unknown instance is accepted.
  ``Dispatch`` is not retried here: the adapter may have run the call, so
  `RemoteDispatcher` re-sends it once itself, with the same attempt and idempotency key.
- ``ArtifactStoreService``: ``GetArtifact``, ``StatArtifact`` and ``ListArtifacts`` read.
  ``PutArtifact`` is not retried: each call stores a new artifact with a new id.
- ``ExecutionStoreService``: the reads (``ListExecutionRecords``, ``GetRunRecord``,
  ``ListRunRecords``, ``GetRunLeaseClaim``, ``ReadRunEvents``, ``BatchGetRunCancelRequests``);
  ``RecordExecutions`` and ``SaveRunRecord`` (upserts keyed by the record's id: the same
  value written twice is written once); ``AppendRunEvents`` (a repeated (run, sequence) is
  ignored); ``TruncateRunEvents`` (a repeat finds nothing more to delete);
  ``RequestRunCancel`` (sets a flag). Not retried: ``CreateRunRecord`` and
  ``ClaimRunLease`` (create-only: a repeat after a lost reply answers "someone else won" to
  the caller that won), and ``RecordOutcomes`` (stores new artifacts and appends their ids).
- ``AgentAdapterService``: ``Describe`` reads; ``Execute`` is the dispatcher's to re-route.
- ``grpc.health.v1.Health``: ``Check`` reads.

The callers that own a non-retried method decide themselves what a lost reply means (the
orchestrator's durable writes retry with their own backoff for `store_retry_seconds`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from dagwire.auth import token_from_env
from dagwire.rpc.auth import TokenChannel
from dagwire.rpc.tls import TlsConfig
from dagwire.settings import DEFAULT_MAX_MESSAGE_BYTES, check_target

__all__ = [
    "KEEPALIVE_OPTIONS",
    "RETRY_POLICY",
    "RETRY_SAFE_METHODS",
    "channel_options",
    "client_channel",
    "service_config",
]

KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),  # ping an idle connection every 30 s
    ("grpc.keepalive_timeout_ms", 10_000),  # and drop it when the ping is not answered in 10 s
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

RETRY_SAFE_METHODS: Mapping[str, tuple[str, ...]] = {
    "dagwire.v1.OrchestratorService": (
        "StartRun",
        "RunWorkflow",
        "GetRun",
        "ListRuns",
        "WatchRun",
        "CancelRun",
    ),
    "dagwire.v1.DispatcherService": (
        "RegisterAdapter",
        "Heartbeat",
        "DeregisterAdapter",
        "ListAdapters",
    ),
    "dagwire.v1.ArtifactStoreService": ("GetArtifact", "StatArtifact", "ListArtifacts"),
    "dagwire.v1.ExecutionStoreService": (
        "RecordExecutions",
        "ListExecutionRecords",
        "SaveRunRecord",
        "GetRunRecord",
        "ListRunRecords",
        "GetRunLeaseClaim",
        "AppendRunEvents",
        "ReadRunEvents",
        "TruncateRunEvents",
        "RequestRunCancel",
        "BatchGetRunCancelRequests",
    ),
    "dagwire.v1.AgentAdapterService": ("Describe",),
    "grpc.health.v1.Health": ("Check",),
}
"""Per service, the methods a channel retries on UNAVAILABLE (see the module's docstring)."""

RETRY_POLICY: Mapping[str, Any] = {
    # 4 tries over about 0.7 s: enough to step over one or two dead replicas, short enough
    # that the callers' own, longer retries (outages, reconnects) stay in charge.
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}

#: A replica that comes back (or a new one behind the name) is dialled again within 2 s, not
#: after gRPC's default backoff of up to two minutes.
_RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def service_config(*, balanced: bool = True) -> str:
    """The gRPC service config of every dagwire client channel, as JSON.

    Args:
        balanced: round-robin over the target's addresses (False: gRPC's pick-first, for a
            single adapter whose "cannot connect" status the dispatcher reads).

    Returns:
        The JSON text for the ``grpc.service_config`` channel option.
    """
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method}
                    for service, methods in RETRY_SAFE_METHODS.items()
                    for method in methods
                ],
                "retryPolicy": dict(RETRY_POLICY),
            }
        ]
    }
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config, separators=(",", ":"))


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, *, balanced: bool = True
) -> list[tuple[str, int | str]]:
    """Channel arguments every dagwire client uses: message limits, keepalive, reconnect
    backoff, balancing and the retry policy.

    Args:
        max_message_bytes: send and receive limit per message.
        balanced: round-robin over the target's addresses (see `service_config`).

    Returns:
        Options for `grpc.aio.insecure_channel(options=...)`.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *KEEPALIVE_OPTIONS,
        *_RECONNECT_OPTIONS,
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(balanced=balanced)),
        # ours, not one published in DNS TXT records
        ("grpc.service_config_disable_resolution", 1),
    ]


def client_channel(
    target: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    balanced: bool = True,
    options: Sequence[tuple[str, int | str]] = (),
    tls: TlsConfig | None = None,
    call_tokens: bool = False,
) -> grpc.aio.Channel:
    """A long-lived channel to a dagwire service (connects lazily): plaintext, or TLS when the
    ``DAGWIRE_TLS_*`` settings say so (`dagwire.rpc.tls`; the files are read now, so a channel
    made after a rotation uses the new ones). With ``DAGWIRE_TOKEN`` or ``DAGWIRE_TOKEN_FILE``
    set, every call carries the token (`dagwire.rpc.auth.TokenChannel`).

    Args:
        target: a gRPC target (`check_target`): ``host:port``, ``dns:///name:port`` or
            ``ipv4:A:P,B:P``.
        max_message_bytes: send and receive limit per message.
        balanced: round-robin over the target's addresses (see `service_config`).
        options: more channel arguments; one named here replaces the default of that name.
        tls: the TLS settings (default: the environment's, `TlsConfig.from_env`).
        call_tokens: calls inside a `dagwire.rpc.auth.use_token` block send its token (an
            adapter's channel to the store, for its attempts' grants).

    Returns:
        The channel; close it with ``await channel.close()``.

    Raises:
        ValueError: `target` is not a target a dagwire client accepts.
        SettingsError: a TLS setting or the token is invalid (a missing or unreadable file, ...).
    """
    target = check_target(target)
    tls = TlsConfig.from_env() if tls is None else tls
    token = token_from_env()
    merged = dict(channel_options(max_message_bytes, balanced=balanced))
    channel: grpc.aio.Channel
    if not tls.dials_tls:
        merged.update(dict(options))
        channel = grpc.aio.insecure_channel(target, options=list(merged.items()))
    else:
        merged.update(dict(tls.channel_options(target)))
        merged.update(dict(options))
        channel = grpc.aio.secure_channel(
            target, tls.channel_credentials(), options=list(merged.items())
        )
    if token is not None or call_tokens:
        return TokenChannel(channel, token)
    return channel
