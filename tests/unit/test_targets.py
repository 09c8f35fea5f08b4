"""gRPC targets of peer services: accepted forms, one-line errors naming the setting, and the
client channel (round-robin over replicas, retries only where a call is safe to repeat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from dagwire.rpc.channels import RETRY_SAFE_METHODS, client_channel, service_config
from dagwire.settings import (
    AdapterSettings,
    ClientSettings,
    DispatcherSettings,
    OrchestratorSettings,
    SettingsError,
    StoreSettings,
    check_target,
    load_settings,
)
from dagwire_cli.errors import EXIT_INVALID
from dagwire_cli.main import app
from tests.servers import REPO_ROOT

GOOD = (
    "127.0.0.1:50051",
    "localhost:50051",
    "orchestrator.dagwire.svc:50051",
    "[::1]:50051",
    "dns:///dagwire-orchestrator.default.svc.cluster.local:50051",
    "dns://10.96.0.10/dagwire-orchestrator:50051",
    "ipv4:127.0.0.1:50051",
    "ipv4:127.0.0.1:50051,127.0.0.1:50061",
    "ipv6:[::1]:50051,[::1]:50061",
)

BAD = (
    ("no-port-here", "is not host:port"),
    ("host:0", "port must be 1-65535"),
    ("host:70000", "port must be 1-65535"),
    ("dns:///no-port", "the port is required"),
    ("dns://authority-only", "is not dns:///name:port"),
    ("ipv4:127.0.0.1", "'127.0.0.1' is not an ipv4 address with a port"),
    ("ipv4:127.0.0.1:1,10.0.0.300:2", "'10.0.0.300:2' is not an ipv4 address"),
    ("ipv4:orchestrator:50051", "is not an ipv4 address"),
    ("http://orchestrator:50051", "is not a gRPC target"),
    ("xds:///orchestrator", "is not a gRPC target"),
)

PEER_SETTINGS = (
    (OrchestratorSettings, "store_addr"),
    (OrchestratorSettings, "dispatcher_addr"),
    (AdapterSettings, "store_addr"),
    (AdapterSettings, "dispatcher_addr"),
    (ClientSettings, "orchestrator_addr"),
    (ClientSettings, "store_addr"),
    (ClientSettings, "dispatcher_addr"),
)

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DAGWIRE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("target", GOOD)
def test_every_accepted_target_form_passes_unchanged(target: str) -> None:
    assert check_target(f"  {target} ") == target


@pytest.mark.parametrize(("target", "reason"), BAD)
def test_a_bad_target_is_refused_quoting_it(target: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        check_target(target)
    assert repr(target) in str(caught.value)


@pytest.mark.parametrize(("cls", "field"), PEER_SETTINGS)
@pytest.mark.parametrize("target", GOOD)
def test_every_peer_setting_takes_every_form_from_the_environment_and_the_flag(
    monkeypatch: pytest.MonkeyPatch, cls: type[ClientSettings], field: str, target: str
) -> None:
    monkeypatch.setenv(f"DAGWIRE_{field.upper()}", target)
    assert getattr(load_settings(cls), field) == target
    flag = "--" + field.replace("_", "-")
    assert getattr(load_settings(cls, [flag, target]), field) == target


@pytest.mark.parametrize(("cls", "field"), PEER_SETTINGS)
@pytest.mark.parametrize(("target", "reason"), BAD)
def test_a_bad_peer_target_is_one_line_naming_the_setting_and_the_value(
    monkeypatch: pytest.MonkeyPatch, cls: type[ClientSettings], field: str, target: str, reason: str
) -> None:
    env = f"DAGWIRE_{field.upper()}"
    monkeypatch.setenv(env, target)
    with pytest.raises(SettingsError) as caught:
        load_settings(cls)
    message = str(caught.value)
    assert message.startswith(f"invalid {env}={target!r}: ")
    assert reason in message and "\n" not in message


@pytest.mark.parametrize("cls", [StoreSettings, DispatcherSettings, OrchestratorSettings])
def test_listen_addresses_stay_host_port(cls: type[StoreSettings]) -> None:
    for target in ("dns:///orchestrator:50051", "ipv4:127.0.0.1:1,127.0.0.1:2"):
        with pytest.raises(SettingsError, match=r"^invalid --listen-addr=.*is not host:port"):
            load_settings(cls, ["--listen-addr", target])


def test_advertise_and_static_adapter_addresses_stay_host_port() -> None:
    with pytest.raises(SettingsError, match="invalid --advertise-addr="):
        load_settings(AdapterSettings, ["--advertise-addr", "dns:///adapter:50060"])
    with pytest.raises(SettingsError, match="invalid --static-adapters="):
        load_settings(DispatcherSettings, ["--static-adapters", "echo=ipv4:127.0.0.1:1"])


def test_cli_bad_server_is_exit_2_with_one_line_naming_flag_variable_and_value() -> None:
    result = runner.invoke(app, ["runs", "--server", "ipv4:orchestrator:50051"])
    assert result.exit_code == EXIT_INVALID
    (line,) = result.stderr.strip().splitlines()
    assert "--server (or DAGWIRE_ORCHESTRATOR_ADDR)" in line
    assert "'ipv4:orchestrator:50051'" in line and "Traceback" not in result.stderr


def test_cli_bad_server_from_the_environment_is_exit_2_naming_it() -> None:
    result = runner.invoke(app, ["runs"], env={"DAGWIRE_ORCHESTRATOR_ADDR": "dns:///no-port"})
    assert result.exit_code == EXIT_INVALID
    assert "DAGWIRE_ORCHESTRATOR_ADDR" in result.stderr and "'dns:///no-port'" in result.stderr


def test_a_service_process_with_a_bad_peer_target_exits_2_with_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dagwire_services.orchestrator"],
        cwd=REPO_ROOT,
        env={**os.environ, "DAGWIRE_STORE_ADDR": "ipv4:store-a:50053,store-b:50053"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.decode().strip().splitlines()
    assert "DAGWIRE_STORE_ADDR='ipv4:store-a:50053,store-b:50053'" in line


def test_the_service_config_balances_round_robin_and_retries_only_safe_methods() -> None:
    config = json.loads(service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method_config,) = config["methodConfig"]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    names = {(n["service"].rsplit(".", 1)[-1], n["method"]) for n in method_config["name"]}
    for safe in [
        ("OrchestratorService", "StartRun"),
        ("OrchestratorService", "GetRun"),
        ("OrchestratorService", "ListRuns"),
        ("OrchestratorService", "CancelRun"),
        ("ExecutionStoreService", "AppendRunEvents"),
        ("ExecutionStoreService", "ReadRunEvents"),
        ("ArtifactStoreService", "GetArtifact"),
    ]:
        assert safe in names
    for unsafe in [
        ("DispatcherService", "Dispatch"),
        ("ArtifactStoreService", "PutArtifact"),
        ("ExecutionStoreService", "CreateRunRecord"),
        ("ExecutionStoreService", "ClaimRunLease"),
        ("ExecutionStoreService", "RecordOutcomes"),
        ("AgentAdapterService", "Execute"),
    ]:
        assert unsafe not in names
    assert "loadBalancingConfig" not in json.loads(service_config(balanced=False))


def test_every_retried_method_exists_in_its_service() -> None:
    from dagwire.v1 import (
        adapter_service_pb2,
        dispatcher_service_pb2,
        orchestrator_service_pb2,
        store_service_pb2,
    )

    services = {}
    for module in (
        adapter_service_pb2,
        dispatcher_service_pb2,
        orchestrator_service_pb2,
        store_service_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = {m.name for m in service.methods}
    services["grpc.health.v1.Health"] = {"Check", "Watch"}
    for service, methods in RETRY_SAFE_METHODS.items():
        assert set(methods) <= services[service], service


def test_client_channel_refuses_a_bad_target() -> None:
    with pytest.raises(ValueError, match="is not a gRPC target"):
        client_channel("https://store:50053")


async def _health_server(name: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _answered_by(stub: health_pb2_grpc.HealthStub) -> str:
    """Which of the replicas "a" and "b" answered a call (the other does not know its name)."""
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service="a"), timeout=5)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return "b"
    return "a"


async def test_an_ipv4_list_spreads_calls_over_both_replicas_and_survives_one_stopping() -> None:
    a, port_a = await _health_server("a")
    b, port_b = await _health_server("b")
    try:
        channel = client_channel(f"ipv4:127.0.0.1:{port_a},127.0.0.1:{port_b}")
        async with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await channel.channel_ready()
            answered: set[str] = set()
            for _ in range(200):  # round-robin reaches "b" once its connection is up
                answered.add(await _answered_by(stub))
                if answered == {"a", "b"}:
                    break
            assert answered == {"a", "b"}
            await a.stop(None)
            for _ in range(20):  # every call succeeds: retried on "b" when "a" is gone
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert {await _answered_by(stub) for _ in range(5)} == {"b"}
    finally:
        await a.stop(None)
        await b.stop(None)
