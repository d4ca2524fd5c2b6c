"""``python -m diffnas``: the ``diffnas`` command line."""

import sys

from .cli import main

sys.exit(main())
