"""Bind each request to a random IPv6 source address from routed prefixes.

Modules: :mod:`.addresses` (prefix math and the keyed address permutation:
pure functions), :mod:`.config` (``IPV6_BIND_*`` settings), :mod:`.host_check`
(is the host set up to send from the prefixes?), :mod:`.middleware` (the
downloader middleware).
"""
