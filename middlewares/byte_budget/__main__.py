"""``python -m middlewares.byte_budget``: see :mod:`middlewares.byte_budget.cli`."""

import sys

from middlewares.byte_budget.cli import main

sys.exit(main())
