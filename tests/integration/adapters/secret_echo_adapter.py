"""An adapter for the secrets tests, built on the Python SDK:
``python secret_echo_adapter.py --listen-addr HOST:PORT --dispatcher-addr ... --store-addr ...``.

Agent ``echo_params``: appends the params it got (one JSON line) to the file named by
``SECRET_ECHO_RECEIVED``, then on attempt 1 fails with an error that quotes them (as a careless
adapter would: the orchestrator must redact the secret from it); later attempts return the
params as the output artifact ``params.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from dagwire.models import Artifact, TaskNode
from dagwire.sdk import serve


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as received:
        received.write(line)


class EchoParams:
    async def execute(
        self, task: TaskNode, inputs: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        text = json.dumps(task.params, ensure_ascii=False)
        await asyncio.to_thread(_append, os.environ["SECRET_ECHO_RECEIVED"], text + "\n")
        if task.attempt == 1:
            raise RuntimeError(f"upstream refused the call with params {text}")
        return [Artifact(name="params.json", content=text.encode(), media_type="application/json")]


if __name__ == "__main__":
    sys.exit(
        serve({"echo_params": EchoParams()}, prog="secret-echo-adapter", service="secret-echo")
    )
