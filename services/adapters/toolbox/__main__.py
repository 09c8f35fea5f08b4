"""``python -m dagwire_services.adapters.toolbox``: run the toolbox adapter."""

import sys

from dagwire_services.adapters.toolbox.main import main

sys.exit(main())
