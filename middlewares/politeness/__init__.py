"""Politeness under pressure, cluster-wide: Retry-After, backoff, circuit breaker, crawl-delay and request rate.

Parts: :mod:`.config` (settings), :mod:`.signals` (Retry-After and backoff
arithmetic, response classification), :mod:`.store` (Redis keys, Lua scripts,
events), :mod:`.view` (this worker's view of which websites need a check),
:mod:`.middleware` (the downloader middleware), :mod:`.cli` (run-time rates).
Reference: docs/politeness.md.
"""
