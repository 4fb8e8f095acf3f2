"""``python -m inik ...``: the ``inik`` command line."""

import sys

from .cli import main

sys.exit(main())
