"""``python -m dagwire_services.store``: run the store service."""

import sys

from dagwire_services.store.main import main

sys.exit(main())
