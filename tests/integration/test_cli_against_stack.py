"""The `dagwire` CLI as a user runs it: a subprocess against a real stack (store, dispatcher,
toolbox adapter and orchestrator as separate processes on free loopback ports, embedded
storage), checking exit codes, stdout/stderr and live progress on a pseudo-terminal."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import REPO_ROOT, find_free_port
from tests.stack import Proc, free_address, start_dispatcher, start_toolbox, wait_adapters

_SCRIPT = Path(sys.executable).parent / "dagwire"  # the installed console script
DAGWIRE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dagwire_cli.main"]

HELLO = """\
name: hello
vars:
  topic: gRPC
tasks:
  - id: greet
    agent: echo
    params: {text: "hello ${user.topic}"}
  - id: shout
    agent: upper
    depends_on: [greet]
"""

FAILING = """\
name: boom
tasks:
  - {id: broken, agent: fail, params: {message: kaputt}}
  - {id: after, agent: echo, depends_on: [broken]}
  - {id: aside, agent: echo, params: {text: fine}}
"""

SLOW = """\
name: slow
tasks:
  - {id: nap, agent: sleep, params: {seconds: 1.5, text: rested}}
  - {id: wake, agent: upper, depends_on: [nap]}
"""

BLOB_SIZE = 3 * 1024 * 1024 + 5  # several 1 MiB chunks and a ragged tail


@dataclass
class Stack:
    """Addresses of the running services and the environment that points the CLI at them."""

    orchestrator: str
    dispatcher: str
    store: str
    toolbox: str
    tmp: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DAGWIRE_ORCHESTRATOR_ADDR": self.orchestrator,
            "DAGWIRE_DISPATCHER_ADDR": self.dispatcher,
            "DAGWIRE_STORE_ADDR": self.store,
        }

    def spec(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def text(self) -> str:
        return self.stdout.decode()


def _start_stack(tmp: Path) -> tuple[Stack, list[Proc]]:
    procs: list[Proc] = []

    async def start() -> Stack:
        store_addr = free_address()
        store = Proc(
            "store",
            ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp / "d")],
            store_addr,
            tmp / "store.log",
        )
        procs.append(store)
        store.start()
        await store.wait_serving()
        dispatcher = await start_dispatcher(tmp)
        procs.append(dispatcher)
        toolbox = await start_toolbox(tmp, dispatcher.address, store_addr)
        procs.append(toolbox)
        await wait_adapters(dispatcher.address, {toolbox.address})
        address = free_address()
        orchestrator = Proc(
            "orchestrator",
            [
                "dagwire_services.orchestrator",
                "--listen-addr",
                address,
                "--store-addr",
                store_addr,
                "--dispatcher-addr",
                dispatcher.address,
            ],
            address,
            tmp / "orchestrator.log",
        )
        procs.append(orchestrator)
        orchestrator.start()
        await orchestrator.wait_serving()
        return Stack(address, dispatcher.address, store_addr, toolbox.address, tmp)

    try:
        return asyncio.run(start()), procs
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli-stack")
    built, procs = _start_stack(tmp)
    try:
        yield built
    finally:
        for proc in reversed(procs):
            proc.stop()


def dagwire(stack: Stack | None, *args: str, timeout: float = 60) -> Result:
    """Run the CLI to its end with stdout and stderr captured (not a terminal)."""
    env = stack.env if stack is not None else dict(os.environ)
    done = subprocess.run(
        [*DAGWIRE, *args], capture_output=True, env=env, cwd=REPO_ROOT, timeout=timeout
    )
    return Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"))


def _blob(size: int, seed: int) -> bytes:
    """The toolbox `blob` agent's content (docs/contracts.md §8)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


# ---------------------------------------------------------------------- run


def test_run_succeeds_with_exit_0_and_the_json_summary_on_stdout(stack: Stack) -> None:
    spec = stack.spec("hello.yaml", HELLO)
    result = dagwire(stack, "run", str(spec), "--var", "topic=wire", "--output", "json")
    assert result.code == 0, result.stderr
    summary = result.json
    assert set(summary) == {"run_id", "status", "nodes"}
    assert summary["status"] == "succeeded"
    assert list(summary["nodes"]) == ["greet", "shout"]
    shout = summary["nodes"]["shout"]
    assert (shout["status"], shout["attempts"], shout["error"]) == ("succeeded", 1, None)
    (artifact,) = shout["artifacts"]
    assert set(artifact) == {"artifact_id", "name", "sha256", "size"}
    assert artifact["sha256"] == hashlib.sha256(b"HELLO WIRE").hexdigest()
    assert artifact["size"] == len(b"HELLO WIRE")
    # Progress went to stderr as plain lines (not a terminal), naming tasks and states.
    assert f"started run {summary['run_id']} (hello)" in result.stderr
    assert "greet: running (attempt 1, agent echo)" in result.stderr
    assert "shout: succeeded after 1 attempt" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_text_summary_shows_the_tasks_and_where_the_artifacts_are(stack: Stack) -> None:
    result = dagwire(stack, "run", str(stack.spec("hello.yaml", HELLO)))
    assert result.code == 0, result.stderr
    lines = result.text.splitlines()
    assert lines[0].endswith("(hello): succeeded")
    assert any(line.split()[:3] == ["shout", "succeeded", "1"] for line in lines)
    assert "dagwire artifacts get ID -o FILE" in result.text
    assert any("shout/out" in line for line in lines)


def test_run_with_a_failing_task_exits_1_and_reports_it(stack: Stack) -> None:
    result = dagwire(stack, "run", str(stack.spec("boom.yaml", FAILING)), "--output", "json")
    assert result.code == 1, result.stderr
    nodes = result.json["nodes"]
    assert result.json["status"] == "failed"
    assert nodes["broken"]["status"] == "failed" and "kaputt" in nodes["broken"]["error"]
    assert nodes["after"]["status"] == "skipped"
    assert nodes["aside"]["status"] == "succeeded"
    assert "broken: failed after 1 attempt" in result.stderr


def test_invalid_spec_exits_2_with_one_line_and_no_traceback(stack: Stack) -> None:
    spec = stack.spec("bad.yaml", "name: bad\ntasks:\n  - id: a\n    agent: echo\n    bogus: 1\n")
    result = dagwire(stack, "run", str(spec))
    assert result.code == 2
    assert (
        result.stderr == f"dagwire run: error: {spec}: line 5: unknown field 'bogus' in task 'a'\n"
    )
    assert result.stdout == b""


def test_unreachable_server_exits_3_naming_the_address(stack: Stack) -> None:
    nowhere = f"127.0.0.1:{find_free_port()}"
    result = dagwire(stack, "run", str(stack.spec("hello.yaml", HELLO)), "--server", nowhere)
    assert result.code == 3
    assert f"cannot reach the orchestrator at {nowhere}" in result.stderr
    assert "dagwire up" in result.stderr and "Traceback" not in result.stderr
    store_down = dagwire(stack, "artifacts", "get", "x", "--store", nowhere)
    assert store_down.code == 3 and f"store at {nowhere}" in store_down.stderr


# ---------------------------------------------------------------------- watch, runs, cancel


def test_watch_and_cancel_of_an_unknown_run_exit_2(stack: Stack) -> None:
    for command in ("watch", "cancel"):
        result = dagwire(stack, command, "no-such-run")
        assert result.code == 2, (command, result.stderr)
        assert result.stderr == (
            f"dagwire {command}: error: no run has id 'no-such-run'; "
            "`dagwire runs` lists the runs\n"
        )


def test_watch_replays_a_finished_run_and_cancel_of_it_exits_2_naming_its_status(
    stack: Stack,
) -> None:
    failed = dagwire(stack, "run", str(stack.spec("boom.yaml", FAILING)), "--output", "json")
    run_id = failed.json["run_id"]
    watched = dagwire(stack, "watch", run_id, "--output", "json")
    assert watched.code == 1
    assert watched.json == failed.json
    assert "broken: failed after 1 attempt" in watched.stderr
    cancel = dagwire(stack, "cancel", run_id)
    assert cancel.code == 2
    assert cancel.stderr == (
        f"dagwire cancel: error: run {run_id} already finished (failed); nothing to cancel\n"
    )


def test_runs_lists_one_run_per_line_newest_first(stack: Stack) -> None:
    first = dagwire(stack, "run", str(stack.spec("hello.yaml", HELLO)), "--output", "json")
    second = dagwire(stack, "run", str(stack.spec("boom.yaml", FAILING)), "--output", "json")
    result = dagwire(stack, "runs", "--limit", "2")
    assert result.code == 0, result.stderr
    rows = [line.split() for line in result.text.splitlines()]
    assert [row[:3] for row in rows] == [
        [second.json["run_id"], "boom", "failed"],
        [first.json["run_id"], "hello", "succeeded"],
    ]
    assert all(row[3].startswith("20") and "T" in row[3] for row in rows)  # ISO start time
    failed_only = dagwire(stack, "runs", "--status", "failed", "--output", "json")
    assert failed_only.code == 0
    assert failed_only.json and {r["status"] for r in failed_only.json} == {"failed"}


def test_ctrl_c_stops_following_the_run_goes_on_and_cancel_stops_it(stack: Stack) -> None:
    spec = stack.spec(
        "long.yaml", "name: long\ntasks:\n  - {id: nap, agent: sleep, params: {seconds: 60}}\n"
    )
    proc = subprocess.Popen(
        [*DAGWIRE, "run", str(spec)], env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 30
    while b"nap: running" not in seen:
        assert time.monotonic() < deadline, seen
        seen += proc.stderr.read1(4096)  # type: ignore[attr-defined]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    stderr = (seen + err).decode()
    assert proc.returncode == 130, stderr
    run_id = stderr.split("started run ")[1].split()[0]
    assert f"Re-attach: dagwire watch {run_id}" in stderr
    assert f"Cancel: dagwire cancel {run_id}" in stderr
    assert "Traceback" not in stderr and out == b""

    listed = dagwire(stack, "runs", "--status", "running")
    assert run_id in listed.text  # it went on
    cancelled = dagwire(stack, "cancel", run_id)
    assert cancelled.code == 0, cancelled.stderr
    assert cancelled.text == f"{run_id} cancelled\n"
    assert dagwire(stack, "cancel", run_id).code == 0  # already cancelled: accepted
    watched = dagwire(stack, "watch", run_id, "--output", "json")
    assert watched.code == 1 and watched.json["nodes"]["nap"]["status"] == "cancelled"


# ---------------------------------------------------------------------- artifacts, adapters


def test_artifacts_get_streams_to_a_file_checking_the_sha256(stack: Stack) -> None:
    spec = stack.spec(
        "blob.yaml",
        f"name: blob\ntasks:\n  - {{id: b, agent: blob, params: {{size: {BLOB_SIZE}, seed: 7}}}}\n",
    )
    run = dagwire(stack, "run", str(spec), "--output", "json")
    assert run.code == 0, run.stderr
    (artifact,) = run.json["nodes"]["b"]["artifacts"]
    expected = _blob(BLOB_SIZE, 7)
    assert artifact["sha256"] == hashlib.sha256(expected).hexdigest()

    target = stack.tmp / "downloads" / "blob.bin"
    target.parent.mkdir()
    result = dagwire(stack, "artifacts", "get", artifact["artifact_id"], "-o", str(target))
    assert result.code == 0, result.stderr
    assert target.read_bytes() == expected
    assert [p.name for p in target.parent.iterdir()] == ["blob.bin"]  # no temp file left
    assert f"out  {BLOB_SIZE} bytes" in result.stderr
    assert f"sha256 {artifact['sha256']}" in result.stderr

    piped = dagwire(stack, "artifacts", "get", artifact["artifact_id"])
    assert piped.code == 0 and piped.stdout == expected  # binary-safe on stdout

    unknown = dagwire(stack, "artifacts", "get", "no-such-artifact", "-o", str(target))
    assert unknown.code == 2 and "no artifact has id 'no-such-artifact'" in unknown.stderr
    assert target.read_bytes() == expected  # untouched


def test_adapters_lists_the_toolbox_with_its_keys_load_and_health(stack: Stack) -> None:
    result = dagwire(stack, "adapters")
    assert result.code == 0, result.stderr
    (line,) = result.text.splitlines()
    address, agents, load_word, load, health = line.split()
    assert address == stack.toolbox
    assert {"echo", "upper", "concat", "fail", "sleep", "blob"} <= set(agents.split(","))
    in_flight, capacity = load.split("/")
    assert load_word == "load" and in_flight == "0" and int(capacity) >= 500
    assert health == "healthy"
    down = dagwire(stack, "adapters", "--dispatcher", f"127.0.0.1:{find_free_port()}")
    assert down.code == 3 and "cannot reach the dispatcher" in down.stderr


# ---------------------------------------------------------------------- live progress on a tty


def test_live_progress_on_a_terminal_shows_each_task_and_its_state(stack: Stack) -> None:
    spec = stack.spec("slow.yaml", SLOW)
    controller, terminal = os.openpty()
    proc = subprocess.Popen(
        [*DAGWIRE, "run", str(spec)],
        env={**stack.env, "COLUMNS": "100", "LINES": "30", "TERM": "xterm"},
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        assert proc.wait(timeout=30) == 0, screen.decode(errors="replace")
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn with terminal control sequences, in place
    assert "nap" in text and "wake" in text
    assert "running" in text and "pending" in text  # seen while it ran
    assert "succeeded" in text
    # The summary still goes to stdout, not the terminal's progress stream.
    assert "(slow): succeeded" in out and "nap/out" in out


# ---------------------------------------------------------------------- hostile text

# A run name and an adapter error carrying terminal escapes: a CSI that clears the screen, an
# OSC that retitles the window (ended by BEL), a carriage return that overwrites the line, a
# C1 CSI (U+009B) and a bidi override. Task ids cannot carry them (the spec's id pattern).
_EVIL_NAME = "evil\x1b]0;owned\x07\x1b[2Jname"
_EVIL_ERROR = "bad\x1b[31mred\rgone\x9b2J\u202eend"
HOSTILE = json.dumps(
    {
        "name": _EVIL_NAME,
        "tasks": [{"id": "broken", "agent": "fail", "params": {"message": _EVIL_ERROR}}],
    }
)
_RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e")


def _no_raw_controls(text: str) -> None:
    for char in _RAW:
        assert char not in text, (char, text)


def test_hostile_server_and_adapter_text_reaches_the_terminal_escaped(stack: Stack) -> None:
    spec = stack.spec("hostile.json", HOSTILE)
    result = dagwire(stack, "run", str(spec))
    assert result.code == 1, result.stderr
    out = result.text
    _no_raw_controls(out)
    _no_raw_controls(result.stderr)
    assert "evil\\x1b]0;owned\\x07\\x1b[2Jname" in out  # shown, visibly escaped
    assert "bad\\x1b[31mred\\rgone\\x9b2J\\u202eend" in out
    assert "bad\\x1b[31mred\\rgone" in result.stderr  # the progress lines too
    run_id = out.split()[1].rstrip(":")
    for args in (["runs"], ["watch", run_id]):
        listed = dagwire(stack, *args)
        _no_raw_controls(listed.text)
        _no_raw_controls(listed.stderr)
        assert "evil\\x1b]0;owned" in listed.text


def test_json_output_keeps_hostile_text_exact_and_escaped(stack: Stack) -> None:
    spec = stack.spec("hostile.json", HOSTILE)
    result = dagwire(stack, "run", str(spec), "--output", "json")
    assert result.code == 1, result.stderr
    raw = result.stdout.decode()
    _no_raw_controls(raw)  # JSON escapes C0 itself; C1 and bidi controls are escaped too
    error = result.json["nodes"]["broken"]["error"]
    assert _EVIL_ERROR in error  # exactly the adapter's text once decoded
    listed = dagwire(stack, "runs", "--output", "json")
    _no_raw_controls(listed.stdout.decode())
    assert _EVIL_NAME in [r["name"] for r in listed.json]
