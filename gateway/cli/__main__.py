"""``python -m gateway.cli``: the ``xbgw`` command (the system tests start daemons this way)."""

import sys

from gateway.cli import main

sys.exit(main())
