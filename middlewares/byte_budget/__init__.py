"""Cluster-wide per-website byte budgets: all workers together download at most *b* bytes per window from a website.

Modules: :mod:`.middleware` (the downloader middleware), :mod:`.config`
(``BYTE_BUDGET_*`` settings), :mod:`.leases` (downloads granted in advance),
:mod:`.store` (Redis keys and Lua scripts), :mod:`.cli`
(``python -m middlewares.byte_budget``).
"""
