"""``python -m dagwire_services.dispatcher``: run the dispatcher service."""

import sys

from dagwire_services.dispatcher.main import main

sys.exit(main())
