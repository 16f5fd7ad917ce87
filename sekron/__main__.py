"""``python -m sekron``: the command line."""

import sys

from .cli import main

sys.exit(main())
