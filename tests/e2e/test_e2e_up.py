"""`dagwire up`: ready line, busy ports, a dying service, and clean stops (docs/contracts.md §9)."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from dagwire_cli.stack import stack_ports
from tests.e2e.harness import (
    EXAMPLES,
    LOOPBACK,
    READY,
    free_port_base,
    port_free,
    port_listening,
    run_cli,
    running_up,
    start_up,
)

SERVICES = {"store", "dispatcher", "orchestrator", "adapters.toolbox"}


def _service_modules(pids: list[int]) -> set[str]:
    modules = set()
    for pid in pids:
        cmdline = psutil.Process(pid).cmdline()
        modules.add(cmdline[cmdline.index("-m") + 1].removeprefix("dagwire_services."))
    return modules


def _alive(pid: int) -> bool:
    """Still running (a zombie waiting for its new parent to reap it has stopped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_prints_one_ready_line_with_every_address_and_the_data_dir(tmp_path: Path) -> None:
    base = free_port_base()
    data_dir = tmp_path / "data"
    with running_up(data_dir, port_base=base) as up:
        ready = [line for line in up.stderr_lines if READY.search(line)]
        assert len(ready) == 1
        for port in stack_ports(base).values():
            assert f"{LOOPBACK}:{port}" in ready[0]
        assert str(data_dir) in ready[0]
        assert "Ctrl-C" in ready[0]
        assert _service_modules(up.child_pids()) == SERVICES
        assert {p.name for p in (data_dir / "logs").iterdir()} == {
            "store.log",
            "dispatcher.log",
            "orchestrator.log",
            "toolbox.log",
        }


def test_up_sigterm_stops_every_process_and_frees_every_port(tmp_path: Path) -> None:
    base = free_port_base()
    up = start_up(tmp_path / "data", port_base=base)
    up.read_until(READY)
    children = up.child_pids()
    assert len(children) == 4

    assert up.stop(signal.SIGTERM) == 0

    assert "stopped" in up.stderr
    assert not [pid for pid in children if _alive(pid)], "orphaned service process"
    assert not [p for p in stack_ports(base).values() if port_listening(p)]
    assert "Traceback" not in up.stderr


def test_up_with_a_busy_port_names_it_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    base = free_port_base()
    busy = stack_ports(base)["store"]
    with socket.socket() as holder:
        holder.bind((LOOPBACK, busy))
        holder.listen()
        up = start_up(tmp_path / "data", port_base=base)
        code = up.wait_exit()

    assert code == 2
    errors = [line for line in up.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert f"{LOOPBACK}:{busy}" in errors[0]
    assert "store" in errors[0]
    assert "Traceback" not in up.stderr
    assert not (tmp_path / "data" / "logs").exists(), "a service was started"


def test_up_reports_a_service_that_dies_and_stops_the_others(tmp_path: Path) -> None:
    base = free_port_base()
    up = start_up(tmp_path / "data", port_base=base)
    up.read_until(READY)
    children = {
        psutil.Process(pid).cmdline()[-1].rpartition(".")[2]: pid for pid in up.child_pids()
    }

    psutil.Process(children["dispatcher"]).kill()
    code = up.wait_exit()  # `up` notices on its own

    assert code == 1
    assert "the dispatcher process was killed by signal 9" in up.stderr
    assert "dispatcher.log" in up.stderr
    assert not [pid for pid in children.values() if _alive(pid)]
    assert not [p for p in stack_ports(base).values() if port_listening(p)]


def test_up_on_the_default_ports_serves_the_cli_with_no_address_configured(
    tmp_path: Path,
) -> None:
    busy = [p for p in stack_ports().values() if not port_free(p)]
    if busy:
        pytest.skip(f"the default ports are in use here: {busy}")
    with running_up(tmp_path / "data", port_base=None) as up:
        result = run_cli("run", EXAMPLES / "hello.yaml", "--output", "json", cwd=tmp_path)
        assert result.returncode == 0, str(result)
        assert result.json()["status"] == "succeeded"
        # Ctrl-C in the terminal where `dagwire up` runs
        assert up.stop(signal.SIGINT) == 0
    assert not [p for p in stack_ports().values() if port_listening(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_up_killed_with_sigkill_still_leaves_no_service_running(tmp_path: Path) -> None:
    base = free_port_base()
    up = start_up(tmp_path / "data", port_base=base)
    up.read_until(READY)
    children = up.child_pids()

    up.process.kill()  # no chance to clean up: the kernel's parent-death signal does it
    up.process.wait()

    deadline = time.monotonic() + 60  # a safety net, not a measurement
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)], "orphaned service process"
    _wait_ports_closed(base, within=5)


def _wait_ports_closed(base: int, within: float) -> None:
    """A process killed with SIGKILL shows as a zombie while its other threads still exit
    (and hold its sockets) for a moment: give its ports that moment."""
    deadline = time.monotonic() + within
    while [p for p in stack_ports(base).values() if port_listening(p)]:
        assert time.monotonic() < deadline, "a port of the stack is still listening"
        time.sleep(0.1)


def test_up_restarted_after_a_crash_keeps_the_crashed_services_log(tmp_path: Path) -> None:
    base = free_port_base()
    data_dir = tmp_path / "data"
    up = start_up(data_dir, port_base=base)
    up.read_until(READY)
    children = {
        psutil.Process(pid).cmdline()[-1].rpartition(".")[2]: pid for pid in up.child_pids()
    }
    store_log = data_dir / "logs" / "store.log"
    before = store_log.read_text()
    assert before.strip(), "the store logged nothing while starting"

    psutil.Process(children["store"]).kill()  # the crash
    assert up.wait_exit() == 1

    with running_up(data_dir, port_base=base):  # `dagwire up` again, on the same data
        after = store_log.read_text()
    assert after.startswith(before), "the crashed store's log was wiped by the restart"
    assert after.count("--- dagwire up: store starting at") == 2
    assert len(after) > len(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_up_killed_with_sigkill_right_after_sigterm_leaves_no_service_running(
    tmp_path: Path,
) -> None:
    import asyncio

    from dagwire.rpc.orchestrator_client import OrchestratorClient

    base = free_port_base()
    up = start_up(tmp_path / "data", port_base=base)
    up.read_until(READY)
    children = up.child_pids()

    async def start_a_long_run() -> None:  # so the orchestrator has a run to drain on SIGTERM
        async with OrchestratorClient(up.env["DAGWIRE_ORCHESTRATOR_ADDR"]) as client:
            spec = "name: long\ntasks:\n  - id: nap\n    agent: sleep\n    params: {seconds: 60}\n"
            await client.start_run(spec)

    asyncio.run(start_a_long_run())
    time.sleep(0.5)
    up.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # `up` has sent SIGTERM to the orchestrator, which drains its run
    up.process.kill()
    up.process.wait()

    deadline = time.monotonic() + 5  # well under the orchestrator's drain of 10 s and more
    while [pid for pid in children if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [psutil.Process(pid).cmdline()[-1] for pid in children if _alive(pid)]
    assert not left, f"running on their own: {left}"
    _wait_ports_closed(base, within=2)
