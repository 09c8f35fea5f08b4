"""docker-compose.yml and the Dockerfile, checked against the code (no Docker engine runs here).

Every dagwire container must run a module that exists, listen on its docs/contracts.md §1 port on
all
interfaces, reach its peers by compose service name on their ports, set only `DAGWIRE_*`
variables its settings class knows (with values that class accepts), and be health-checked
over the gRPC health protocol on its own port.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from dagwire.settings import (
    DEFAULT_PORTS,
    AdapterSettings,
    CommonSettings,
    DispatcherSettings,
    OrchestratorSettings,
    StoreSettings,
)
from dagwire_cli.main import app

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

#: compose service -> (module it runs, its settings class, its docs/contracts.md §1 port)
DAGWIRE_SERVICES: dict[str, tuple[str, type[CommonSettings], int]] = {
    "store": ("dagwire_services.store", StoreSettings, DEFAULT_PORTS["store"]),
    "dispatcher": ("dagwire_services.dispatcher", DispatcherSettings, DEFAULT_PORTS["dispatcher"]),
    "orchestrator": (
        "dagwire_services.orchestrator",
        OrchestratorSettings,
        DEFAULT_PORTS["orchestrator"],
    ),
    "toolbox": ("dagwire_services.adapters.toolbox", AdapterSettings, DEFAULT_PORTS["adapter"]),
}
#: The services compose runs twice: the second replica is "<name>-2", aliased as "<name>".
REPLICATED = ("store", "dispatcher", "orchestrator")
DAGWIRE_SERVICES.update({f"{name}-2": DAGWIRE_SERVICES[name] for name in REPLICATED})
#: Where a second replica is published on the host: its port + 100.
SECOND_REPLICA_PORT_OFFSET = 100
#: peer address setting -> the compose service it must name
PEERS = {
    "dispatcher_addr": "dispatcher",
    "store_addr": "store",
    "orchestrator_addr": "orchestrator",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose["services"][name]
    return service


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list spelling
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _host(address: str) -> str:
    return address.rpartition(":")[0].removeprefix("http://").removeprefix("https://")


def _fields(settings: type[CommonSettings]) -> set[str]:
    return {f"DAGWIRE_{name.upper()}" for name in settings.model_fields}


def test_compose_runs_mongo_minio_the_three_services_and_the_toolbox(
    compose: dict[str, Any],
) -> None:
    assert set(compose["services"]) == {"mongo", "minio", *DAGWIRE_SERVICES}


@pytest.mark.parametrize("name", ["mongo", "minio"])
def test_compose_backing_images_have_pinned_tags(compose: dict[str, Any], name: str) -> None:
    image = _service(compose, name)["image"]
    repository, _, tag = image.rpartition(":")
    assert repository, f"{name}: image {image!r} has no tag"
    assert tag not in ("", "latest"), f"{name}: image {image!r} is not pinned"


@pytest.mark.parametrize("name", list(DAGWIRE_SERVICES))
def test_compose_service_is_built_from_the_one_root_dockerfile(
    compose: dict[str, Any], name: str
) -> None:
    build = _service(compose, name)["build"]
    assert (REPO / build["context"]).resolve() == REPO
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert DOCKERFILE.is_file()


@pytest.mark.parametrize("name", list(DAGWIRE_SERVICES))
def test_compose_service_runs_an_existing_service_module(
    compose: dict[str, Any], name: str
) -> None:
    module, _, _ = DAGWIRE_SERVICES[name]
    command = _service(compose, name)["command"]
    argv = shlex.split(command) if isinstance(command, str) else command
    assert argv == ["python", "-m", module]
    assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"


@pytest.mark.parametrize("name", list(DAGWIRE_SERVICES))
def test_compose_service_sets_only_variables_its_settings_know_with_valid_values(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, settings_class, _ = DAGWIRE_SERVICES[name]
    env = _environment(_service(compose, name))
    unknown = {k for k in env if k.startswith("DAGWIRE_")} - _fields(settings_class)
    assert not unknown, f"{name} sets variables {settings_class.__name__} ignores: {unknown}"
    for key in list(os.environ):
        if key.startswith("DAGWIRE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_class()  # raises on any value the process would refuse at start
    assert settings.log_format == "json"


@pytest.mark.parametrize("name", list(DAGWIRE_SERVICES))
def test_compose_service_listens_on_all_interfaces_on_its_default_port(
    compose: dict[str, Any], name: str
) -> None:
    _, _, port = DAGWIRE_SERVICES[name]
    listen = _environment(_service(compose, name))["DAGWIRE_LISTEN_ADDR"]
    assert listen == f"0.0.0.0:{port}"


@pytest.mark.parametrize("name", list(DAGWIRE_SERVICES))
def test_compose_service_reaches_every_peer_by_service_name_and_port(
    compose: dict[str, Any], name: str
) -> None:
    _, settings_class, _ = DAGWIRE_SERVICES[name]
    env = _environment(_service(compose, name))
    for field, peer in PEERS.items():
        if field not in settings_class.model_fields:
            continue
        variable = f"DAGWIRE_{field.upper()}"
        # the loopback default would point inside the container itself
        assert variable in env, f"{name} must set {variable}"
        port = DAGWIRE_SERVICES[peer][2]
        # replicated peers by their DNS name, balanced over every replica
        expected = f"dns:///{peer}:{port}" if peer in REPLICATED else f"{peer}:{port}"
        assert env[variable] == expected
        assert peer in _service(compose, name).get("depends_on", {}), f"{name} -> {peer}"


def test_compose_toolbox_advertises_its_service_name_never_a_wildcard(
    compose: dict[str, Any],
) -> None:
    env = _environment(_service(compose, "toolbox"))
    assert env["DAGWIRE_ADVERTISE_ADDR"] == f"toolbox:{DEFAULT_PORTS['adapter']}"
    assert _port(env["DAGWIRE_ADVERTISE_ADDR"]) == _port(env["DAGWIRE_LISTEN_ADDR"])


def test_compose_store_uses_the_compose_mongo_and_minio_with_minio_credentials(
    compose: dict[str, Any],
) -> None:
    store = _environment(_service(compose, "store"))
    minio = _environment(_service(compose, "minio"))
    assert re.fullmatch(r"mongodb://mongo:27017/\w+", store["DAGWIRE_MONGODB_URI"])
    assert _host(store["DAGWIRE_S3_ENDPOINT"]) == "minio"
    assert _port(store["DAGWIRE_S3_ENDPOINT"]) == 9000
    assert store["DAGWIRE_S3_ACCESS_KEY"] == minio["MINIO_ROOT_USER"]
    assert store["DAGWIRE_S3_SECRET_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert len(store["DAGWIRE_S3_BUCKET"]) >= 3


@pytest.mark.parametrize("name", list(DAGWIRE_SERVICES))
def test_compose_service_health_check_uses_grpc_health_on_its_own_port(
    compose: dict[str, Any], name: str
) -> None:
    _, _, port = DAGWIRE_SERVICES[name]
    test = _service(compose, name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "dagwire", "health"]
    assert _port(test[3]) == port


def test_compose_health_check_command_exists_in_the_cli() -> None:
    commands = {command.name for command in app.registered_commands}
    assert "health" in commands, "the health checks run `dagwire health ADDRESS`"


@pytest.mark.parametrize("name", list(DAGWIRE_SERVICES))
def test_compose_published_ports_are_loopback_and_match_the_listen_port(
    compose: dict[str, Any], name: str
) -> None:
    _, _, port = DAGWIRE_SERVICES[name]
    for mapping in _service(compose, name).get("ports", []):
        host_ip, host_port, container_port = str(mapping).split(":")
        assert host_ip == "127.0.0.1"
        assert int(container_port) == port
        offset = SECOND_REPLICA_PORT_OFFSET if name.endswith("-2") else 0
        assert int(host_port) == port + offset


def test_compose_client_facing_services_are_published_on_the_cli_default_ports(
    compose: dict[str, Any],
) -> None:
    for name in ("orchestrator", "dispatcher", "store"):
        port = DAGWIRE_SERVICES[name][2]
        assert f"127.0.0.1:{port}:{port}" in _service(compose, name)["ports"]


@pytest.mark.parametrize("name", REPLICATED)
def test_compose_runs_two_replicas_of_each_service_under_one_dns_name(
    compose: dict[str, Any], name: str
) -> None:
    first, second = _service(compose, name), _service(compose, f"{name}-2")
    assert second["networks"]["default"]["aliases"] == [name]
    assert second["command"] == first["command"]
    assert _environment(second) == _environment(first)
    assert second.get("depends_on") == first.get("depends_on")


def test_compose_orchestrators_hand_their_runs_over_on_stop(compose: dict[str, Any]) -> None:
    for name in ("orchestrator", "orchestrator-2"):
        assert _environment(_service(compose, name))["DAGWIRE_ON_STOP"] == "hand-over"


def test_compose_depends_on_waits_for_health_of_services_that_have_a_health_check(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        for peer, condition in (service.get("depends_on") or {}).items():
            assert "healthcheck" in _service(compose, peer), f"{name} waits for {peer}"
            assert condition == {"condition": "service_healthy"}


def test_compose_every_volume_is_a_declared_named_volume(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = {
        str(volume).split(":", 1)[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
    }
    assert used, "mongo and minio keep their data in named volumes"
    assert used == declared


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_on_python_311_slim_and_installs_the_lock_with_hashes() -> None:
    steps = _dockerfile_instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert "--require-hashes -r requirements.lock" in runs
    assert "--no-deps" in runs  # the project itself adds no unpinned package


def test_dockerfile_copies_only_paths_that_exist_and_the_packaged_source_folders() -> None:
    copied: set[str] = set()
    for op, arg in _dockerfile_instructions():
        if op == "COPY":
            *sources, _ = arg.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: no such path"
                copied.add(source.rstrip("/"))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs, "pyproject.toml maps the packages to folders"
    assert package_dirs <= copied, "every packaged folder is in the image"
    assert {"requirements.lock", "pyproject.toml", "README.md"} <= copied


def test_dockerfile_default_command_is_an_existing_service_module() -> None:
    cmd = next(arg for op, arg in _dockerfile_instructions() if op == "CMD")
    argv = yaml.safe_load(cmd)
    assert argv[:2] == ["python", "-m"]
    assert importlib.util.find_spec(f"{argv[2]}.__main__") is not None


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".git", ".venv", ".dagwire"} <= ignored
    copied = {"dagwire", "services", "clients", "requirements.lock", "pyproject.toml"}
    assert not ignored & copied
