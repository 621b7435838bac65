"""``python -m middlewares.politeness``: see :mod:`middlewares.politeness.cli`."""

import sys

from middlewares.politeness.cli import main

sys.exit(main())
