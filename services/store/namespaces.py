"""What a client principal may read from the store: the runs of its namespaces, and their
records, events and artifacts (docs/security.md). Another namespace's run reads exactly as an
unknown one: NOT_FOUND, or an empty listing, so nothing tells a client that it exists.

Services and admins read everything, and the bearer of an attempt's store grant the artifacts
of its run (checked by the artifact servicer); with auth off there is no principal and
nothing is filtered.
"""

from __future__ import annotations

from collections import OrderedDict

from dagwire.auth import Principal, Role
from dagwire.models import DEFAULT_NAMESPACE
from dagwire.rpc.auth import current_principal
from dagwire.stores.base import ExecutionStore

__all__ = ["NamespaceGuard"]

_CACHED_RUNS = 10_000


class NamespaceGuard:
    """Answers "may the caller see this run?" from the run's namespace.

    A run's namespace never changes once it is recorded, so it is cached (bounded, least
    recently used first out): a client reading the artifacts of one run costs one lookup.
    """

    def __init__(self, executions: ExecutionStore) -> None:
        self._executions = executions
        self._namespaces: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def scope() -> tuple[str, ...] | None:
        """The namespaces the caller may see, or None for every namespace."""
        principal = current_principal()
        if principal is None or not _restricted(principal):
            return None
        return principal.namespaces

    async def sees_run(self, run_id: str) -> bool:
        """Whether the caller may see `run_id` (False for an unknown run too, when it is
        restricted; True for anyone unrestricted)."""
        scope = self.scope()
        if scope is None:
            return True
        if not run_id:  # an artifact stored outside any run belongs to `default`
            return DEFAULT_NAMESPACE in scope
        namespace = await self.namespace_of(run_id)
        return namespace is not None and namespace in scope

    async def namespace_of(self, run_id: str) -> str | None:
        """The namespace of `run_id` (cached), or None when no run has this id."""
        cached = self._namespaces.get(run_id)
        if cached is not None:
            self._namespaces.move_to_end(run_id)
            return cached
        run = await self._executions.get_run(run_id)
        if run is None:
            return None
        self._namespaces[run_id] = run.namespace
        if len(self._namespaces) > _CACHED_RUNS:
            self._namespaces.popitem(last=False)
        return run.namespace


def _restricted(principal: Principal) -> bool:
    if principal.grant is not None:  # its run is checked instead (`ArtifactStoreServicer`)
        return False
    unrestricted = {Role.ADMIN, Role.SERVICE, Role.ADAPTER}
    return not principal.roles & unrestricted
