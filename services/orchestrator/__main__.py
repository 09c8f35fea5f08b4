"""``python -m dagwire_services.orchestrator``: run the orchestrator service."""

import sys

from dagwire_services.orchestrator.main import main

sys.exit(main())
