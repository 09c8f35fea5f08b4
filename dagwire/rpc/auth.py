"""Tokens on the wire: the server's check of every call, and the clients' bearer metadata.

With ``DAGWIRE_AUTH_FILE`` set (`dagwire.auth.AuthFile`), `AuthInterceptor` (installed by
`dagwire.rpc.serve.create_server`) identifies the caller of every call by its
``authorization: Bearer <token>`` metadata, or by the names of its verified mTLS client
certificate, and checks that one of its roles may make the call (`METHOD_ROLES`):

- health (``grpc.health.v1.Health``) stays open, for probes;
- no token, or one the file does not list: UNAUTHENTICATED;
- a principal whose roles may not make the call: PERMISSION_DENIED naming the principal,
  its roles and the call.

The principal is then `current_principal()` for the handler, which checks what only it can
see (the namespace of a run, the agent keys of a registration). Clients send the process's
token (`dagwire.auth.token_from_env`) on every call of every channel `client_channel` makes
(`TokenChannel`). docs/security.md has the table for users.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from dagwire.auth import AuthFile, Principal, Role
from dagwire.grants import GRANT_PREFIX, GrantKey
from dagwire.rpc.status import rewrap_handler

__all__ = [
    "AUTHORIZATION_KEY",
    "GRANT_METHODS",
    "METHOD_ROLES",
    "AuthInterceptor",
    "TokenChannel",
    "current_principal",
    "use_token",
]

AUTHORIZATION_KEY = "authorization"

_C, _A, _S = Role.CLIENT, Role.ADAPTER, Role.SERVICE
_ANY = frozenset(Role)

METHOD_ROLES: Mapping[str, Mapping[str, frozenset[Role]]] = {
    "dagwire.v1.OrchestratorService": {
        method: frozenset({_C})
        for method in ("StartRun", "RunWorkflow", "GetRun", "ListRuns", "CancelRun", "WatchRun")
    },
    "dagwire.v1.DispatcherService": {
        "Dispatch": frozenset({_S}),
        "RegisterAdapter": frozenset({_A}),
        "Heartbeat": frozenset({_A}),
        "DeregisterAdapter": frozenset({_A}),
        "ListAdapters": frozenset({_C, _A, _S}),
    },
    "dagwire.v1.ArtifactStoreService": {
        # adapters reach the store with their attempts' grants only (`GRANT_METHODS`)
        "PutArtifact": frozenset({_S}),
        "GetArtifact": frozenset({_C, _S}),
        "StatArtifact": frozenset({_C, _S}),
        "ListArtifacts": frozenset({_C, _S}),
    },
    "dagwire.v1.ExecutionStoreService": {
        **{
            method: frozenset({_C, _S})
            for method in (
                "ListExecutionRecords",
                "GetRunRecord",
                "ListRunRecords",
                "ReadRunEvents",
            )
        },
        **{
            method: frozenset({_S})
            for method in (
                "RecordExecutions",
                "RecordOutcomes",
                "SaveRunRecord",
                "CreateRunRecord",
                "ClaimRunLease",
                "GetRunLeaseClaim",
                "AppendRunEvents",
                "TruncateRunEvents",
                "RequestRunCancel",
                "BatchGetRunCancelRequests",
                "PutRegistryEntry",
                "DeleteRegistryEntry",
                "ListRegistryEntries",
                "PruneRegistryEntries",
            )
        },
    },
    "dagwire.v1.AgentAdapterService": {
        "Execute": frozenset({_S}),
        "Describe": frozenset({_S}),
    },
    # any principal may read the schema; health never reaches this table
    "grpc.reflection.v1alpha.ServerReflection": {"ServerReflectionInfo": _ANY},
    "grpc.reflection.v1.ServerReflection": {"ServerReflectionInfo": _ANY},
}
"""Per service and method, the roles that may call it (admin may call everything). A method
missing here is refused to everyone but admins: a new RPC is closed until it is listed."""

GRANT_METHODS = frozenset(
    {
        "/dagwire.v1.ArtifactStoreService/GetArtifact",
        "/dagwire.v1.ArtifactStoreService/StatArtifact",
        "/dagwire.v1.ArtifactStoreService/PutArtifact",
    }
)
"""What the bearer of an attempt's store grant may call (the store checks the artifacts)."""

_OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "dagwire_principal", default=None
)


def current_principal() -> Principal | None:
    """The caller of the call being handled, or None when auth is off."""
    return _principal.get()


_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Behavior = Callable[..., Any]


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call against the auth file (see the module docstring)."""

    def __init__(self, auth: AuthFile, grants: GrantKey | None = None) -> None:
        self._auth = auth
        self._grants = grants
        self._cache: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        """Wrap the method's handler in the check (once per method; cached)."""
        method = handler_call_details.method
        service, name = _split(method)
        if service in _OPEN_SERVICES:
            return await continuation(handler_call_details)
        cached = self._cache.get(method)
        if cached is not None:
            return cast("grpc.RpcMethodHandler[_Req, _Resp]", cached)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        roles = METHOD_ROLES.get(service, {}).get(name, frozenset())
        call = f"{service.rsplit('.', 1)[-1]}.{name}"
        wrapped = _wrap_handler(handler, self._check(call, roles, method in GRANT_METHODS))
        self._cache[method] = wrapped
        return wrapped

    def _check(
        self, call: str, roles: frozenset[Role], granted: bool
    ) -> Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Principal]]:
        auth, grants = self._auth, self._grants

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
            principal = _identify(auth, grants, context)
            if principal is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{call} needs a token: send 'authorization: Bearer <token>' "
                    "(DAGWIRE_TOKEN or DAGWIRE_TOKEN_FILE); none was sent, or it is not one "
                    "this server knows",
                )
            assert principal is not None  # abort raised
            if principal.grant is not None:
                if not granted:
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"the store grant of {principal.grant.name} may not call {call} (it "
                        "allows GetArtifact, StatArtifact and PutArtifact)",
                    )
            elif not (principal.is_admin or principal.roles & roles):
                allowed = ", ".join(sorted(roles)) or "admin"
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"principal {principal.name!r} (role {principal.role_names}) may not call "
                    f"{call} (allowed: {allowed}{', admin' if roles else ''})",
                )
            _principal.set(principal)
            return principal

        return check


def _identify(
    auth: AuthFile, grants: GrantKey | None, context: grpc.aio.ServicerContext[Any, Any]
) -> Principal | None:
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_KEY and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return None
            if token.startswith(GRANT_PREFIX):
                grant = grants.verify(token) if grants is not None else None
                if grant is None:
                    return None
                return Principal(name=grant.name, roles=frozenset(), namespaces=(), grant=grant)
            return auth.by_token(token)
    names = _certificate_names(context)
    return auth.by_tls_names(names) if names else None


def _certificate_names(context: grpc.aio.ServicerContext[Any, Any]) -> list[str]:
    """The CN and SANs of the caller's client certificate (verified by the TLS handshake:
    gRPC sets them only for a certificate the client CA signed)."""
    try:
        properties = context.auth_context()
    except Exception:  # no transport security
        return []
    names: list[str] = []
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        for value in properties.get(key, ()):
            names.append(value.decode(errors="replace") if isinstance(value, bytes) else value)
    return names


def _wrap_handler(
    handler: grpc.RpcMethodHandler[_Req, _Resp],
    check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Principal]],
) -> grpc.RpcMethodHandler[_Req, _Resp]:
    return rewrap_handler(handler, lambda behavior: _wrap_behavior(behavior, check))


def _wrap_behavior(
    behavior: _Behavior,
    check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Principal]],
) -> _Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await check(context)
            async for response in behavior(request, context):
                yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await check(context)
        return await behavior(request, context)

    return call


# --- clients ------------------------------------------------------------------------------


_call_token: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dagwire_call_token", default=None
)


@contextlib.contextmanager
def use_token(token: str | None) -> Iterator[None]:
    """Send `token` instead of the process's own on the calls made inside the block, on the
    channels that allow it (``client_channel(call_tokens=True)``): how an adapter presents an
    attempt's store grant. None (or empty) changes nothing."""
    if not token:
        yield
        return
    reset = _call_token.set(token)
    try:
        yield
    finally:
        _call_token.reset(reset)


def _metadata_with(metadata: Any, header: str) -> list[tuple[str, str | bytes]]:
    """`metadata` (of any accepted shape, possibly None) with `header` as its authorization."""
    out: list[tuple[str, str | bytes]] = [
        (key, value) for key, value in (metadata or ()) if key != AUTHORIZATION_KEY
    ]
    out.append((AUTHORIZATION_KEY, header))
    return out


class _TokenMultiCallable:
    """A multi-callable that adds the authorization metadata to each call it makes."""

    __slots__ = ("_header", "_inner")

    def __init__(self, inner: Any, header: str | None) -> None:
        self._inner = inner
        self._header = header

    def __call__(self, request: Any = None, *, metadata: Any = None, **kwargs: Any) -> Any:
        token = _call_token.get()
        header = f"Bearer {token}" if token is not None else self._header
        if header is not None:
            metadata = _metadata_with(metadata, header)
        return self._inner(request, metadata=metadata, **kwargs)


class TokenChannel(grpc.aio.Channel):
    """A channel that sends ``authorization: Bearer <token>`` on every call, or the token of
    `use_token` inside its block (None: only those).

    It wraps the channel's multi-callables instead of installing client interceptors: an
    intercepted grpc.aio call costs about twice a plain one (measured on health checks), and
    this costs one function call.
    """

    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        self._channel = channel
        self._header = f"Bearer {token}" if token is not None else None

    async def __aenter__(self) -> TokenChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._channel.close(None)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.unary_unary(method, *args, **kwargs)
        return _TokenMultiCallable(inner, self._header)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.unary_stream(method, *args, **kwargs)
        return _TokenMultiCallable(inner, self._header)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.stream_unary(method, *args, **kwargs)
        return _TokenMultiCallable(inner, self._header)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        inner = self._channel.stream_stream(method, *args, **kwargs)
        return _TokenMultiCallable(inner, self._header)
