"""``python -m crawler``: see :mod:`crawler.frontier.cli`."""

import sys

from crawler.frontier.cli import main

sys.exit(main())
