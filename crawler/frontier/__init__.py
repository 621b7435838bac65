"""The shared frontier: a Scrapy scheduler over Redis, shared by every worker of a spider.

A request's path through it::

    spider / seeds ──► scheduler.enqueue_request ──► outbox ──push.lua──► Redis
    Redis ──pop.lua──► refill ──► prefetch buffer ──► scheduler.next_request ──► engine

Modules: :mod:`.scheduler` (Scrapy's scheduler interface), :mod:`.spider`
(the spider base class: seeds, cluster-wide idle close), :mod:`.config`
(``FRONTIER_*`` settings), :mod:`.store` (Redis keys, Lua scripts, typed
replies), :mod:`.codec` (requests as JSON), :mod:`.intake` (a request into an
outbox entry), :mod:`.outbox` (batched pushes), :mod:`.refill` (batched pops),
:mod:`.prefetch` (the local buffer), :mod:`.delivery`, :mod:`.leases` and
:mod:`.in_flight` (leased delivery: acknowledgements, renewals),
:mod:`.failures` (the failed list), :mod:`.cluster_view` (heartbeat, cluster
idle), :mod:`.cli` (``python -m crawler``).
"""
