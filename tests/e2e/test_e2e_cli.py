"""The CLI against `dagwire up`, as a user runs it (docs/contracts.md §9): outputs and exit
statuses."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import selectors
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.e2e.harness import (
    COMMAND_TIMEOUT,
    EXAMPLES,
    LOOPBACK,
    UUID,
    Result,
    UpProcess,
    blob_sha256,
    clean_env,
    dagwire_executable,
    file_sha256,
    free_port_base,
    run_cli,
    strip_ansi,
    write_spec,
)

BLOB_SIZE = 64 * 1024 * 1024
BLOB_SEED = 42


def _one_line_error(result: Result) -> str:
    """The error a user sees: exactly one non-empty stderr line, never a traceback."""
    assert "Traceback" not in result.stderr, str(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, str(result)
    return lines[0]


def _run_json(up: UpProcess, spec: Path, *args: str, cwd: Path) -> tuple[Result, dict[str, object]]:
    result = run_cli("run", spec, "--output", "json", *args, env=up.env, cwd=cwd)
    assert "Traceback" not in result.stderr, str(result)
    return result, result.json()


# ----------------------------------------------------------------------------- run


def test_run_hello_exits_0_and_prints_the_json_summary(up: UpProcess, workdir: Path) -> None:
    result, summary = _run_json(up, EXAMPLES / "hello.yaml", "--var", "topic=e2e", cwd=workdir)

    assert result.returncode == 0, str(result)
    assert UUID.fullmatch(str(summary["run_id"]))
    assert summary["status"] == "succeeded"
    nodes = summary["nodes"]
    assert isinstance(nodes, dict)
    assert set(nodes) == {"greet", "shout"}
    for node in nodes.values():
        assert node["status"] == "succeeded"
        assert node["attempts"] == 1
        assert node["error"] is None
        [artifact] = node["artifacts"]
        assert set(artifact) >= {"artifact_id", "name", "sha256", "size"}
        assert artifact["name"] == "out"
    shout = nodes["shout"]["artifacts"][0]
    assert shout["size"] == len("HELLO E2E")

    target = workdir / "shout.txt"
    got = run_cli("artifacts", "get", shout["artifact_id"], "-o", target, env=up.env, cwd=workdir)
    assert got.returncode == 0, str(got)
    assert target.read_text() == "HELLO E2E"


def test_run_text_output_puts_the_result_on_stdout_and_progress_on_stderr(
    up: UpProcess, workdir: Path
) -> None:
    result = run_cli("run", EXAMPLES / "hello.yaml", env=up.env, cwd=workdir)

    assert result.returncode == 0, str(result)
    assert "succeeded" in result.stdout
    assert UUID.search(result.stdout + result.stderr)
    # not a terminal: plain lines, no cursor movement or colour codes
    assert "\x1b[" not in result.stderr
    assert "greet" in result.stderr
    assert "shout" in result.stderr


def test_run_server_flag_wins_over_the_environment(up: UpProcess, workdir: Path) -> None:
    env = {**up.env, "DAGWIRE_ORCHESTRATOR_ADDR": f"{LOOPBACK}:{free_port_base()}"}
    server = up.env["DAGWIRE_ORCHESTRATOR_ADDR"]
    result = run_cli(
        "run", EXAMPLES / "hello.yaml", "--server", server, "--output", "json", env=env
    )
    assert result.returncode == 0, str(result)
    assert result.json()["status"] == "succeeded"


def test_run_failing_task_exits_1_and_skips_its_dependents(up: UpProcess, workdir: Path) -> None:
    spec = write_spec(
        workdir,
        "failing.yaml",
        """
name: failing
tasks:
  - id: broken
    agent: fail
    params: {message: "the disk is full"}
  - id: after
    agent: upper
    depends_on: [broken]
  - id: independent
    agent: echo
    params: {text: "still runs"}
""",
    )
    result, summary = _run_json(up, spec, cwd=workdir)

    assert result.returncode == 1, str(result)
    assert summary["status"] == "failed"
    nodes = summary["nodes"]
    assert isinstance(nodes, dict)
    assert nodes["broken"]["status"] == "failed"
    assert "the disk is full" in nodes["broken"]["error"]
    assert nodes["after"]["status"] == "skipped"
    assert nodes["independent"]["status"] == "succeeded"


def test_run_retries_example_succeeds_on_the_third_attempt(up: UpProcess, workdir: Path) -> None:
    result, summary = _run_json(up, EXAMPLES / "retries.yaml", cwd=workdir)

    assert result.returncode == 0, str(result)
    nodes = summary["nodes"]
    assert isinstance(nodes, dict)
    assert nodes["flaky"]["attempts"] == 3
    assert nodes["flaky"]["status"] == "succeeded"


def test_run_fan_out_fan_in_example_joins_in_depends_on_order(up: UpProcess, workdir: Path) -> None:
    result, summary = _run_json(up, EXAMPLES / "fan_out_fan_in.yaml", cwd=workdir)

    assert result.returncode == 0, str(result)
    nodes = summary["nodes"]
    assert isinstance(nodes, dict)
    join = nodes["join"]["artifacts"][0]["artifact_id"]
    target = workdir / "join.txt"
    got = run_cli("artifacts", "get", join, "-o", target, env=up.env, cwd=workdir)
    assert got.returncode == 0, str(got)
    assert target.read_text() == "north | south | east"


# ----------------------------------------------------------------------------- invalid input


INVALID_SPECS = {
    "malformed-yaml": ("name: x\ntasks: [\n", "line"),
    "cycle": (
        "name: x\ntasks:\n"
        "  - {id: a, agent: echo, depends_on: [b]}\n"
        "  - {id: b, agent: echo, depends_on: [a]}\n",
        "cycle",
    ),
    "unresolved-variable": (
        'name: x\ntasks:\n  - {id: a, agent: echo, params: {text: "${user.missing}"}}\n',
        "missing",
    ),
    "unknown-key": ("name: x\ntasks:\n  - {id: a, agent: echo, dependson: [b]}\n", "dependson"),
    "unknown-dependency": (
        "name: x\ntasks:\n  - {id: a, agent: echo, depends_on: [ghost]}\n",
        "ghost",
    ),
}


@pytest.mark.parametrize("case", list(INVALID_SPECS))
def test_run_invalid_spec_exits_2_with_one_line_naming_the_problem(
    up: UpProcess, workdir: Path, case: str
) -> None:
    text, named = INVALID_SPECS[case]
    spec = write_spec(workdir, f"{case}.yaml", text)

    result = run_cli("run", spec, env=up.env, cwd=workdir)

    assert result.returncode == 2, str(result)
    assert named in _one_line_error(result).lower()


def test_run_missing_file_exits_2_naming_it(up: UpProcess, workdir: Path) -> None:
    result = run_cli("run", workdir / "nowhere.yaml", env=up.env, cwd=workdir)

    assert result.returncode == 2, str(result)
    assert "nowhere.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_bad_var_syntax_exits_2(up: UpProcess, workdir: Path) -> None:
    result = run_cli("run", EXAMPLES / "hello.yaml", "--var", "novalue", env=up.env, cwd=workdir)

    assert result.returncode == 2, str(result)
    assert "novalue" in result.stderr
    assert "Traceback" not in result.stderr


UNKNOWN_ID = "01a20000-0000-7000-8000-000000000000"


@pytest.mark.parametrize(
    "args",
    [
        ("watch", UNKNOWN_ID),
        ("cancel", UNKNOWN_ID),
        ("artifacts", "get", UNKNOWN_ID, "-o", "out.bin"),
    ],
    ids=["watch", "cancel", "artifacts-get"],
)
def test_unknown_id_exits_2_with_one_line_naming_it(
    up: UpProcess, workdir: Path, args: tuple[str, ...]
) -> None:
    result = run_cli(*args, env=up.env, cwd=workdir)

    assert result.returncode == 2, str(result)
    assert UNKNOWN_ID in _one_line_error(result)
    assert not (workdir / "out.bin").exists()


# ----------------------------------------------------------------------------- unreachable


@pytest.mark.parametrize(
    "args",
    [
        ("run", str(EXAMPLES / "hello.yaml"), "--server", "{addr}"),
        ("runs", "--server", "{addr}"),
        ("watch", UNKNOWN_ID, "--server", "{addr}"),
        ("cancel", UNKNOWN_ID, "--server", "{addr}"),
        ("artifacts", "get", UNKNOWN_ID, "--store", "{addr}"),
        ("adapters", "--dispatcher", "{addr}"),
    ],
    ids=["run", "runs", "watch", "cancel", "artifacts-get", "adapters"],
)
def test_unreachable_server_exits_3_with_one_line_naming_the_address(
    workdir: Path, args: tuple[str, ...]
) -> None:
    address = f"{LOOPBACK}:{free_port_base()}"  # nothing listens there

    result = run_cli(*(a.format(addr=address) for a in args), cwd=workdir)

    assert result.returncode == 3, str(result)
    assert address in _one_line_error(result)


# ----------------------------------------------------------------------------- runs, adapters


def test_runs_lists_a_finished_run_first_with_its_full_id(up: UpProcess, workdir: Path) -> None:
    _, summary = _run_json(up, EXAMPLES / "hello.yaml", cwd=workdir)

    result = run_cli("runs", env=up.env, cwd=workdir)

    assert result.returncode == 0, str(result)
    first = result.stdout.splitlines()[0]
    assert first.split()[0] == summary["run_id"]
    assert "hello" in first
    assert "succeeded" in first


def test_adapters_lists_the_toolbox_with_its_address_and_agents(
    up: UpProcess, workdir: Path
) -> None:
    result = run_cli("adapters", env=up.env, cwd=workdir)

    assert result.returncode == 0, str(result)
    [line] = [line for line in result.stdout.splitlines() if str(up.ports["toolbox"]) in line]
    for agent in ("echo", "upper", "concat", "fail", "sleep", "blob"):
        assert agent in line


# ----------------------------------------------------------------------------- watch, cancel


def _slow_spec(workdir: Path, seconds: float) -> Path:
    return write_spec(
        workdir,
        "slow.yaml",
        f"name: slow\ntasks:\n  - id: nap\n    agent: sleep\n"
        f"    params: {{seconds: {seconds}, text: rested}}\n",
    )


def _start_run_in_background(up: UpProcess, spec: Path, workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*dagwire_executable(), "run", str(spec)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(up.env),
        cwd=workdir,
    )


def _running_run_id(up: UpProcess, workdir: Path, name: str) -> str:
    """The id of the newest run called `name` that is running (polls `dagwire runs`)."""
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while time.monotonic() < deadline:
        listed = run_cli("runs", env=up.env, cwd=workdir)
        for line in listed.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1] == name and "running" in fields:
                return fields[0]
        time.sleep(0.2)
    raise AssertionError(f"no running {name!r} run appeared in `dagwire runs`")


def test_cancel_stops_a_running_run_and_run_exits_1(up: UpProcess, workdir: Path) -> None:
    running = _start_run_in_background(up, _slow_spec(workdir, 60), workdir)
    try:
        run_id = _running_run_id(up, workdir, "slow")

        cancelled = run_cli("cancel", run_id, env=up.env, cwd=workdir)
        assert cancelled.returncode == 0, str(cancelled)
        _, err = running.communicate(timeout=COMMAND_TIMEOUT)
        assert running.returncode == 1, err

        again = run_cli("cancel", run_id, env=up.env, cwd=workdir)
        assert again.returncode == 0, str(again)  # already cancelled: accepted
        watched = run_cli("watch", run_id, "--output", "json", env=up.env, cwd=workdir)
        assert watched.returncode == 1, str(watched)
        assert watched.json()["status"] == "cancelled"
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()


def test_cancel_a_succeeded_run_exits_2(up: UpProcess, workdir: Path) -> None:
    _, summary = _run_json(up, EXAMPLES / "hello.yaml", cwd=workdir)

    result = run_cli("cancel", str(summary["run_id"]), env=up.env, cwd=workdir)

    assert result.returncode == 2, str(result)
    assert "Traceback" not in result.stderr


def _run_id_once_task_runs(process: subprocess.Popen[str], task: str) -> str:
    """Read `dagwire run`'s stderr until it named its run and shows `task` running."""
    assert process.stderr is not None
    text = ""
    run_id = None
    for line in process.stderr:
        text += line
        found = UUID.search(line)
        run_id = run_id or (found.group(0) if found else None)
        if run_id and re.search(rf"\b{task}\b.*running", line):
            return run_id
    raise AssertionError(f"`dagwire run` never showed its run with {task} running:\n{text}")


def test_ctrl_c_on_run_detaches_says_how_to_reattach_and_the_run_goes_on(
    up: UpProcess, workdir: Path
) -> None:
    running = _start_run_in_background(up, _slow_spec(workdir, 5), workdir)
    try:
        run_id = _run_id_once_task_runs(running, "nap")
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()

    assert "Traceback" not in err
    assert f"dagwire watch {run_id}" in err
    assert "cancel" in err
    watched = run_cli("watch", run_id, "--output", "json", env=up.env, cwd=workdir)
    assert watched.returncode == 0, str(watched)
    assert watched.json()["status"] == "succeeded"


# ----------------------------------------------------------------------------- large artifact


@pytest.mark.slow
def test_64_mib_blob_downloads_intact_and_matches_the_design_definition(
    up: UpProcess, workdir: Path
) -> None:
    spec = write_spec(
        workdir,
        "blob.yaml",
        f"name: blob\ntasks:\n  - id: blob\n    agent: blob\n"
        f"    params: {{size: {BLOB_SIZE}, seed: {BLOB_SEED}}}\n",
    )
    result, summary = _run_json(up, spec, cwd=workdir)
    assert result.returncode == 0, str(result)
    nodes = summary["nodes"]
    assert isinstance(nodes, dict)
    [artifact] = nodes["blob"]["artifacts"]
    assert artifact["size"] == BLOB_SIZE

    target = workdir / "blob.bin"
    got = run_cli("artifacts", "get", artifact["artifact_id"], "-o", target, env=up.env)
    assert got.returncode == 0, str(got)

    assert target.stat().st_size == BLOB_SIZE
    downloaded = file_sha256(target)
    assert downloaded == artifact["sha256"]
    assert downloaded == blob_sha256(BLOB_SIZE, BLOB_SEED)


# ----------------------------------------------------------------------------- live progress


def test_run_on_a_terminal_shows_live_progress_while_the_task_runs(
    up: UpProcess, workdir: Path
) -> None:
    """The task shows as running while the command is still going, then as succeeded."""
    spec = _slow_spec(workdir, 2)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [*dagwire_executable(), "run", str(spec)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=clean_env({**up.env, "TERM": "xterm-256color"}),
        cwd=workdir,
        start_new_session=True,
    )
    os.close(terminal)
    seen = bytearray()
    running_while_alive = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(controller, selectors.EVENT_READ)
            deadline = time.monotonic() + COMMAND_TIMEOUT
            while time.monotonic() < deadline:
                if selector.select(timeout=0.5):
                    try:
                        chunk = os.read(controller, 65536)
                    except OSError:  # EIO: the terminal closed once the command exited
                        break
                    if not chunk:
                        break
                    seen += chunk
                    text = strip_ansi(seen.decode("utf-8", "replace"))
                    if process.poll() is None and re.search(r"nap\b.*running", text):
                        running_while_alive = True
                elif process.poll() is not None:
                    break
        code = process.wait(timeout=COMMAND_TIMEOUT)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()

    text = strip_ansi(seen.decode("utf-8", "replace"))
    assert code == 0, text
    assert "Traceback" not in text
    assert running_while_alive, f"no live 'running' line for task nap before the end:\n{text}"
    assert re.search(r"nap\b.*succeeded", text), text
    assert text.index("running") < text.rindex("succeeded")
