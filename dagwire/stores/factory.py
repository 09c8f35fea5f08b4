"""Build the artifact and execution store backends that the settings select.

Embedded by default (`LocalArtifactStore` + `SqliteExecutionStore` under ``DAGWIRE_DATA_DIR``);
`MongoExecutionStore` when ``DAGWIRE_MONGODB_URI`` is set; `S3ArtifactStore` when
``DAGWIRE_S3_ENDPOINT`` is set, wrapped in `TieredArtifactStore` (artifacts of at most 64 KiB
inline in MongoDB, the rest in S3) when both are set. Backend modules are imported only when
selected.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from dagwire.settings import SettingsError, StorageSettings
from dagwire.stores.base import ArtifactStore, ExecutionStore

__all__ = ["build_artifact_store", "build_execution_store", "describe_storage"]


def build_artifact_store(settings: StorageSettings) -> ArtifactStore:
    """The artifact store the settings select (no I/O happens yet).

    Args:
        settings: storage settings.

    Returns:
        `TieredArtifactStore` (small artifacts inline in the ``artifacts`` collection of the
        execution store's database, the rest in S3) when ``mongodb_uri`` and ``s3_endpoint``
        are both set; `S3ArtifactStore` when only ``s3_endpoint`` is; else
        `LocalArtifactStore` under ``data_dir/artifacts``.

    Raises:
        SettingsError: S3 is selected without both keys (the message names the variables).
    """
    if settings.s3_endpoint:
        missing = [
            f"DAGWIRE_{name.upper()}"
            for name, value in (
                ("s3_access_key", settings.s3_access_key),
                ("s3_secret_key", settings.s3_secret_key),
            )
            if not value
        ]
        if missing:
            raise SettingsError(
                f"DAGWIRE_S3_ENDPOINT is set ({settings.s3_endpoint}): set {' and '.join(missing)}"
                " too"
            )
        assert settings.s3_secret_key is not None
        s3 = _backend("dagwire.stores.s3", "S3ArtifactStore")
        large = cast(
            ArtifactStore,
            s3(
                settings.s3_endpoint,
                settings.s3_access_key,
                settings.s3_secret_key.get_secret_value(),
                settings.s3_bucket,
                secure=settings.s3_endpoint.startswith("https://"),
            ),
        )
        if not settings.mongodb_uri:
            return large
        tiered = _backend("dagwire.stores.tiered", "TieredArtifactStore")
        return cast(
            ArtifactStore,
            tiered(settings.mongodb_uri, large, database=_database_name(settings.mongodb_uri)),
        )
    from dagwire.stores.local import LocalArtifactStore

    return LocalArtifactStore(settings.data_dir / "artifacts")


def build_execution_store(settings: StorageSettings) -> ExecutionStore:
    """The execution store the settings select (no I/O happens yet).

    Args:
        settings: storage settings.

    Returns:
        `MongoExecutionStore` when ``mongodb_uri`` is set (on the database the URI names,
        ``dagwire`` when it names none), else `SqliteExecutionStore` at
        ``data_dir/executions.sqlite3``.
    """
    if settings.mongodb_uri:
        mongo = _backend("dagwire.stores.mongo", "MongoExecutionStore")
        database = _database_name(settings.mongodb_uri)
        return cast(ExecutionStore, mongo(settings.mongodb_uri, database=database))
    from dagwire.stores.local import SqliteExecutionStore

    return SqliteExecutionStore(settings.data_dir / "executions.sqlite3")


def describe_storage(settings: StorageSettings) -> dict[str, str]:
    """Which backends the settings select, for the start-up log line (no secrets).

    Args:
        settings: storage settings.

    Returns:
        ``{"artifact_store": ..., "execution_store": ...}``.
    """
    safe = settings.safe_dict()
    if settings.s3_endpoint and settings.mongodb_uri:
        artifacts = (
            f"tiered: up to 64 KiB inline in mongodb {safe['mongodb_uri']} database "
            f"{_database_name(settings.mongodb_uri)} collection artifacts, larger in s3 "
            f"{safe['s3_endpoint']} bucket {settings.s3_bucket}"
        )
    elif settings.s3_endpoint:
        artifacts = f"s3 {safe['s3_endpoint']} bucket {settings.s3_bucket}"
    else:
        artifacts = f"local {settings.data_dir / 'artifacts'}"
    executions = (
        f"mongodb {safe['mongodb_uri']}"
        if settings.mongodb_uri
        else f"sqlite {settings.data_dir / 'executions.sqlite3'}"
    )
    return {"artifact_store": artifacts, "execution_store": executions}


def _database_name(mongodb_uri: str) -> str:
    """The database the URI names, ``dagwire`` when it names none."""
    from pymongo.uri_parser import parse_uri

    database: str | None = parse_uri(mongodb_uri).get("database")
    return database or "dagwire"


def _backend(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"storage backend {module}.{name} is not available: {exc}") from None
