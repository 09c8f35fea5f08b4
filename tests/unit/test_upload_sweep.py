"""Which upload temp files a start-up sweep removes (`sweep_temp_files`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dagwire.stores import _files
from dagwire.stores._files import STALE_TEMP_SECONDS, TempBlob, sweep_temp_files


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sweep_removes_uploads_of_gone_processes_and_keeps_live_ones(tmp_path: Path) -> None:
    live = TempBlob(tmp_path)  # this process's upload in progress
    live.write(b"abc")
    dead = tmp_path / f".tmp-{dead_pid()}.0badf00d-abcd1234"
    same_pid_earlier = tmp_path / f".tmp-{os.getpid()}.00000000-abcd1234"  # a restarted pid
    old_unowned = tmp_path / ".tmp-abcd1234"
    new_unowned = tmp_path / ".tmp-efgh5678"
    blob = tmp_path / "0123abcd"
    for path in (dead, same_pid_earlier, old_unowned, new_unowned, blob):
        path.write_bytes(b"partial")
    stale = time.time() - STALE_TEMP_SECONDS - 10
    os.utime(old_unowned, (stale, stale))

    removed = sweep_temp_files([tmp_path, tmp_path / "missing"])

    assert removed == 3
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live._path.name, new_unowned.name, blob.name])
    assert _files._owner_alive(live._path.name) is True
    live.discard()
