"""``python -m crawler``: see :mod:`crawler.frontier.cli`; ``status``: see :mod:`crawler.status`."""

import sys

from crawler.frontier.cli import main


def _is_status(argv: list[str]) -> bool:
    words = [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] != "--redis-url")]
    return words[:1] == ["status"]


if _is_status(sys.argv[1:]):
    from crawler.status import main as status_main

    args = sys.argv[1:]
    args.remove("status")
    sys.exit(status_main(args))
sys.exit(main())
