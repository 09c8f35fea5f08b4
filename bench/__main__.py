"""`make bench`: run every benchmark and print one table per group.

Usage: python -m bench [GROUP ...]
(groups: scheduler, stores, orchestration, store_service, full_stack, compare, secure, load)
"""

from __future__ import annotations

import importlib
import sys

from bench.table import print_table

GROUPS = {
    "scheduler": "Scheduler alone (docs/contracts.md §11: 100,000 tasks in seconds, linear)",
    "stores": "Embedded stores (SQLite execution store, local artifact store)",
    "orchestration": "In-process orchestration overhead, embedded stores, no-op adapter",
    "store_service": "Artifacts through the store service (subprocess) vs direct MinIO; store RSS",
    "full_stack": "Full service stack (4 processes), echo tasks: ms/task, docs/contracts.md §11",
    "compare": "Full service stack: this checkout side by side with the baseline commit",
    "secure": "Full stack plain vs TLS + mTLS + tokens + store grants (dagwire up --secure)",
    "load": "Replicated stack on FerretDB + MinIO: concurrent runs, a 10,000-task run, peak RSS",
}


def main(argv: list[str]) -> int:
    chosen = argv or list(GROUPS)
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown:
        print(
            f"unknown benchmark group(s): {', '.join(unknown)}; choose from {', '.join(GROUPS)}",
            file=sys.stderr,
        )
        return 2
    for group in chosen:
        module = importlib.import_module(f"bench.{group}")
        print_table(module.run(), title=GROUPS[group])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
