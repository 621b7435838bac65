"""The shared frontier's Redis data, for the scheduler, the CLI and other components.

Key layout (``<p>`` is ``FRONTIER_KEY_PREFIX``, by default ``{<spider>}``: the
braces are a Redis Cluster hash tag, so every key of one spider's frontier is
in one slot and each Lua script runs on one node):

=========================  ======  ==============================================
key                        type    content
=========================  ======  ==============================================
``<p>:sites``              zset    website -> time (Redis clock, s) it may next
                                   be served; exactly the websites with queued
                                   requests. Lowest score is served first.
``<p>:q:<website>``        zset    the website's requests; score ``-priority``;
                                   member ``<seq:016x>#<fingerprint>`` + JSON,
                                   the fingerprint's 20 raw bytes (written
                                   before them, and for fingerprints of another
                                   length: ``<seq:016x>:<hex>:<json>``, still
                                   read; seq keeps FIFO order within a priority)
``<p>:depths``             zset    website -> requests queued: the depth index,
                                   which orders the websites a status shows
                                   (``lua/depth.lua``: it lags the queues by
                                   what workers popped since their last push
                                   or heartbeat)
``<p>:queued``             string  total requests queued, exact
                                   (``lua/depth.lua``)
``<p>:not_before``         zset    website -> time before which it must not be
                                   served (kept while the website's queue is
                                   empty, expired entries pruned on pop)
``<p>:seen``               set     fingerprints (20 raw bytes; ``<p>:seen:fmt``
                                   says whether older hex ones may be there)
                                   of every request ever stored
                                   (``FRONTIER_DEDUPE=exact``; with a TTL one set
                                   per generation ``<p>:seen:g<n>``; ``bloom``:
                                   ``<p>:seen[:g<n>]:meta`` and segments
                                   ``:<filter>:<segment>``, ``lua/seen_lib.lua``)
``<p>:seq``                string  sequence counter
``<p>:workers``            zset    worker id -> last time it was busy
``<p>:pops:<worker>``      hash    ``<pop id>.<i>`` -> a request leased to the
                                   worker (JSON: website, member, score), until
                                   the worker acknowledges it (``lua/pop.lua``,
                                   ``lua/leases.lua``, ``lua/release.lua``)
``<p>:leases``             zset    worker id -> lease deadline (Redis clock), for
                                   every worker holding leased requests
``<p>:failed``             list    requests that finally failed (JSON: reason,
                                   url, website, fingerprint, score, payload)
``<p>:dead``               list    stored payloads no worker could decode
``<redis_key>``            list    seeds (scrapy-redis compatible), not hash-tagged
``<redis_key>:dead``       list    rejected seeds, unchanged
=========================  ======  ==============================================

Every hot-path method (push, pop, mark_not_before) is one Redis round trip;
acknowledgements and lease renewals ride on pops and heartbeats. With
``FRONTIER_PARTITIONS`` > 1, one store per partition
(:mod:`crawler.frontier.partitions`), each under its own prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crawler.lua_source import script_source

if TYPE_CHECKING:
    from redis.asyncio import Redis

MODE_DEDUPE = 0
MODE_DONT_FILTER = 1
MODE_REQUEUE = 2


def _script(name: str) -> str:
    return script_source("crawler.frontier", name)


@dataclass(slots=True)
class PushEntry:
    """One request on its way into the frontier."""

    website: str
    fingerprint: str
    mode: int
    score: float
    not_before: float
    payload: bytes
    url: str | None = None  # the URL, when it alone decides the fingerprint (local duplicate cache)


@dataclass(slots=True)
class PopResult:
    now: float
    sites_with_work: int
    next_ready: float | None
    items: list[tuple[str, str, bytes]]  # (website, lease field, member)
    found: list[str] = field(default_factory=list)  # the unanswered pop ids delivered again
    reclaimed: int = 0  # requests of expired leases put back in their queues by this call


class PopReceipts:
    """Which of a worker's pops got their reply (see ``lua/pop.lua``): none is lost to a timeout."""

    _MAX_LOST = 50

    def __init__(self) -> None:
        self.lost: list[tuple[str, int]] = []  # (pop id, n asked) without a reply: asked for again
        self._seq = 0

    def next_id(self, tag: str = "") -> str:
        """A new pop id; ``tag`` names a partition (crawler.frontier.partitions): ``<tag><n>``."""
        self._seq += 1
        return f"{tag}{self._seq}"

    def lost_in(self, tag: str) -> list[tuple[str, int]]:
        return [x for x in self.lost if x[0].startswith(tag)] if tag else self.lost

    def forget(self, tag: str) -> None:
        """The pops of partition ``tag`` are settled (the worker released what it held there)."""
        self.lost = [x for x in self.lost if not x[0].startswith(tag)] if tag else []

    def failed(self, pop_id: str, n: int) -> None:
        self.lost = [*self.lost, (pop_id, n)][-self._MAX_LOST:]

    def succeeded(self, result: PopResult) -> None:
        # A lost pop not found yet may still run (its connection was closed with the command sent).
        self.lost = [x for x in self.lost if x[0] not in result.found]


@dataclass(slots=True)
class Status:
    now: float
    sites_with_work: int
    sites_ready: int
    last_busy: float | None
    seeds: int
    leased: int = 0  # workers holding leased requests
    reclaimed: int = 0  # requests of expired leases put back in their queues by this call


@dataclass(slots=True)
class WebsiteQueue:
    website: str
    depth: int
    ready_at: float
    not_before: float | None


def fingerprint_arg(fingerprint: str) -> bytes:
    """What the scripts store for a fingerprint (hex): its 20 raw bytes (``lua/seen_lib.lua``), else its text."""
    if len(fingerprint) == 40:
        try:
            return bytes.fromhex(fingerprint)
        except ValueError:
            pass
    return fingerprint.encode("utf-8")


def split_member(member: bytes) -> tuple[str, bytes]:
    """``(fingerprint (hex), payload)`` of a queue member, of either form (``lua/push.lua``)."""
    if member[16:17] == b"#":
        return member[17:37].hex(), member[37:]
    _seq, fp, payload = member.split(b":", 2)
    return fp.decode("utf-8"), payload


class FrontierStore:
    """Async access to one spider's frontier in Redis."""

    def __init__(self, redis: Redis, prefix: str, seen_spec: str = "", receipt_tag: str = "") -> None:
        """``receipt_tag`` starts this store's pop ids (a partition's, crawler.frontier.partitions)."""
        self.redis = redis
        self.prefix = prefix
        self.seen_spec = seen_spec  # crawler.frontier.seen.SeenConfig.spec
        self.receipt_tag = receipt_tag
        self.sites_key = f"{prefix}:sites"
        self.not_before_key = f"{prefix}:not_before"
        self.seen_key = f"{prefix}:seen"
        self.seq_key = f"{prefix}:seq"
        self.workers_key = f"{prefix}:workers"
        self.dead_key = f"{prefix}:dead"
        self.depths_key = f"{prefix}:depths"
        self.queued_key = f"{prefix}:queued"
        self.leases_key = f"{prefix}:leases"
        self.failed_key = f"{prefix}:failed"
        self.queue_prefix = f"{prefix}:q:"
        self.calls = 0  # Redis round trips made through this store
        # website -> requests popped and not yet sent for the depth index (lua/depth.lua): they ride on
        # the next push, heartbeat or release, and net out against the links that push stores
        self._popped: dict[str, int] = {}
        self._push = redis.register_script(_script("push.lua"))
        self._pop = redis.register_script(_script("pop.lua"))
        self._not_before = redis.register_script(_script("not_before.lua"))
        self._status = redis.register_script(_script("status.lua"))
        self._release = redis.register_script(_script("release.lua"))
        self._pop_seeds = redis.register_script(_script("pop_seeds.lua"))
        self._seen = redis.register_script(_script("seen.lua"))

    def queue_key(self, website: str) -> str:
        return self.queue_prefix + website

    def pops_key(self, worker: str) -> str:
        return f"{self.prefix}:pops:{worker}"

    def _take_popped(self) -> list[Any]:
        """The popped counts for the depth index, as the scripts read them (P, then P pairs), now
        forgotten here: a call that fails may have run, and sending them again would count them twice
        (an entry left too high is reset when its queue empties)."""
        popped, self._popped = self._popped, {}
        return [len(popped), *(x for site_k in popped.items() for x in site_k)]

    async def push(self, entries: list[PushEntry], worker: str) -> tuple[list[bool], int]:
        """Store ``entries`` atomically; returns (stored flag per entry, websites with work)."""
        runs: dict[str, list[int]] = {}  # the entries by website (in order within each): one run each
        for i, e in enumerate(entries):
            runs.setdefault(e.website, []).append(i)
        order = [i for run in runs.values() for i in run]
        args: list[Any] = [worker, len(entries)]
        for i in order:
            e = entries[i]
            args += [e.website, fingerprint_arg(e.fingerprint), e.mode, e.score, e.not_before or 0, e.payload]
        args.append(self.seen_spec)
        args += self._take_popped()
        keys = [self.seen_key, self.sites_key, self.not_before_key, self.seq_key, self.workers_key,
                self.depths_key, self.queued_key, *(self.queue_key(w) for w in runs)]
        self.calls += 1
        out = await self._push(keys=keys, args=args)
        stored = [False] * len(entries)
        for i, flag in zip(order, out, strict=False):
            stored[i] = bool(flag)
        return stored, int(out[-1])

    async def seen(self, op: str, fingerprints: list[str]) -> list[int]:
        """``op`` ("check", "add" or "forget") for each fingerprint, as a push would (``lua/seen.lua``).

        check: 1 if seen; add: 1 if it was new; forget: the next push of it is stored again.
        """
        self.calls += 1
        out = await self._seen(keys=[self.seen_key], args=[self.seen_spec, op, *map(fingerprint_arg, fingerprints)])
        return [int(x) for x in out] if isinstance(out, list) else [int(out)]

    async def seen_count(self) -> int:
        """Fingerprints stored in the seen set or filters (of the generations still remembered)."""
        self.calls += 1
        return int(await self._seen(keys=[self.seen_key], args=[self.seen_spec, "count"]))

    async def pop(self, n: int, worker: str, receipts: PopReceipts | None = None, lease: float = 0.0,
                  acks: list[str] | None = None) -> PopResult:
        """Up to ``n`` requests from websites that may be served now (and those of ``receipts.lost``).

        With ``receipts``, the requests are leased to ``worker`` (for ``lease``
        seconds, renewed by its later calls) until acknowledged, and
        ``receipts`` is updated; ``acks`` are lease fields acknowledged.
        """
        self.calls += 1
        pop_id = receipts.next_id(self.receipt_tag) if receipts is not None else ""
        lost = receipts.lost_in(self.receipt_tag) if receipts is not None else []
        acks = acks or []
        try:
            out = await self._pop(keys=[self.sites_key, self.not_before_key, self.workers_key, self.pops_key(worker),
                                        self.leases_key, self.depths_key, self.queued_key],
                                  args=[self.queue_prefix, n, worker, pop_id, lease, self.pops_key(""),
                                        len(acks), *acks, len(lost), *(x for pair in lost for x in pair)])
        except BaseException:  # a timeout, or cancelled: the reply may never come
            if receipts is not None:
                receipts.failed(pop_id, n)
            raise
        nxt = float(out[2])
        end = len(out) - int(out[5])
        items = [(out[i].decode("utf-8"), out[i + 1].decode("ascii"), out[i + 2]) for i in range(6, end, 3)]
        popped = self._popped
        for website, _, _ in items:
            popped[website] = popped.get(website, 0) + 1
        for website in out[end:]:  # emptied: their index entries are gone, with what this worker popped
            popped.pop(website.decode("utf-8"), None)
        result = PopResult(float(out[0]), int(out[1]), None if nxt < 0 else nxt, items,
                           out[3].decode().split(",") if out[3] else [], int(out[4]))
        if receipts is not None:
            receipts.succeeded(result)
        return result

    async def release(self, worker: str, acks: list[str], receipts: PopReceipts | None = None) -> int:
        """A closing worker: what it holds unacknowledged goes back to the queues; returns how many requests."""
        self.calls += 1
        out = await self._release(keys=[self.sites_key, self.not_before_key, self.pops_key(worker), self.leases_key,
                                        self.depths_key, self.queued_key],
                                  args=[self.queue_prefix, worker, *self._take_popped(), *acks])
        if receipts is not None:
            receipts.forget(self.receipt_tag)
        return int(out)

    async def mark_not_before(self, website: str, until: float) -> float:
        """No worker pops from ``website`` before ``until`` (Unix time, Redis clock); the later mark wins."""
        self.calls += 1
        out = await self._not_before(keys=[self.sites_key, self.not_before_key], args=[website, until])
        return float(out)

    async def release_not_before(self, website: str) -> bool:
        """Remove ``website``'s not-before mark (it may be served now); False if it had none."""
        self.calls += 1
        seconds, micros = await self.redis.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.not_before_key, website)
            pipe.zadd(self.sites_key, {website: seconds + micros / 1e6}, xx=True, lt=True)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def status(self, worker: str, busy: bool, seeds_key: str | None, lease: float = 0.0,
                     acks: list[str] | None = None) -> Status:
        """Cluster view (and a heartbeat when ``busy``); seeds waiting at ``seeds_key``.

        Also acknowledges ``acks``, renews the worker's lease and reclaims expired ones (``lua/status.lua``).
        """
        # Two calls when seeds are asked for: the seed list is not under the
        # frontier's hash tag, and a pipelined script costs a SCRIPT EXISTS.
        self.calls += 1 + bool(seeds_key)
        out = await self._status(keys=[self.sites_key, self.workers_key, self.not_before_key, self.pops_key(worker),
                                       self.leases_key, self.depths_key, self.queued_key],
                                 args=[worker, int(busy), lease, self.queue_prefix, self.pops_key(""),
                                       *self._take_popped(), *(acks or [])])
        seeds = int(await self.redis.llen(seeds_key)) if seeds_key else 0
        last = float(out[3])
        return Status(float(out[0]), int(out[1]), int(out[2]), None if last < 0 else last, seeds,
                      int(out[4]), int(out[5]))

    async def leases(self) -> list[tuple[str, float, int]]:
        """(worker, lease deadline, requests held) of every worker holding leases (for people and tests)."""
        held: Any = await self.redis.zrange(self.leases_key, 0, -1, withscores=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker, _ in held:
                pipe.hlen(self.pops_key(worker.decode()))
            sizes = await pipe.execute()
        return [(w.decode(), float(t), int(n)) for (w, t), n in zip(held, sizes, strict=True)]

    async def record_failed(self, records: list[dict[str, Any]]) -> None:
        """Append requests that finally failed to the failed list (one call)."""
        if records:
            self.calls += 1
            await self.redis.rpush(self.failed_key, *(json.dumps(r, separators=(",", ":")) for r in records))

    async def pop_seeds(self, key: str, n: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
        """Up to ``n`` seeds from the head of list ``key``, atomically, as (size, seed); and how many are left.

        A seed over ``max_bytes`` comes back cut to its first 200 bytes and ends
        the batch (``lua/pop_seeds.lua``).
        """
        self.calls += 1
        out = await self._pop_seeds(keys=[key], args=[n, max_bytes])
        return [(int(out[i]), out[i + 1]) for i in range(1, len(out), 2)], int(out[0])

    async def dead_letter(self, key: str, payloads: list[bytes]) -> None:
        if payloads:
            self.calls += 1
            await self.redis.rpush(key, *payloads)

    async def queues(self) -> list[WebsiteQueue]:
        """Every website with queued requests or a not-before mark, its depth read from its queue
        (one ``ZCARD`` per website: for people, not for the hot path)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.sites_key, 0, -1, withscores=True)
            pipe.zrange(self.not_before_key, 0, -1, withscores=True)
            sites, raw_marks = await pipe.execute()
        depths: list[int] = []
        for i in range(0, len(sites), 1000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for site, _ in sites[i:i + 1000]:
                    pipe.zcard(self.queue_key(site.decode()))
                depths += await pipe.execute()
        marks: dict[bytes, float] = dict(raw_marks)
        out = [WebsiteQueue(s.decode(), int(d), float(score), marks.pop(s, None))
               for (s, score), d in zip(sites, depths, strict=True)]
        out += [WebsiteQueue(s.decode(), 0, float(t), float(t)) for s, t in marks.items()]
        return out

    async def deepest(self, n: int) -> tuple[list[tuple[str, int]], int, int]:
        """The ``n`` deepest websites by the depth index (website, requests queued, read from its queue),
        how many websites have requests, and the total queued: two round trips and ``n + 3`` commands,
        whatever the size of the queues."""
        self.calls += 2
        ordered: Any = await self.redis.zrange(self.depths_key, 0, n - 1, desc=True)
        names = [w.decode() for w in ordered]
        async with self.redis.pipeline(transaction=True) as pipe:  # depths and total of one moment
            for website in names:
                pipe.zcard(self.queue_key(website))
            pipe.zcard(self.sites_key)
            pipe.get(self.queued_key)
            *depths, websites, total = await pipe.execute()
        rows = sorted(((w, int(d)) for w, d in zip(names, depths, strict=True) if d), key=lambda r: -r[1])
        return rows, int(websites), int(total or 0)

    async def queued(self) -> int:
        """Total requests queued (the depth index's total: one O(1) call)."""
        self.calls += 1
        return int(await self.redis.get(self.queued_key) or 0)

    async def reindex(self) -> int:
        """Rebuild the depth index from the queues (a frontier written before it existed); the total.

        One ``ZCARD`` per website with queued requests: for people, not for the hot path. Run it
        while no worker uses the frontier: the scripts change the index by deltas, and a push or
        pop between the reading and the writing here would be counted wrongly until the next reindex.
        """
        sites: Any = await self.redis.zrange(self.sites_key, 0, -1)
        depths: dict[str, int] = {}
        for i in range(0, len(sites), 1000):
            chunk = [s.decode() for s in sites[i:i + 1000]]
            async with self.redis.pipeline(transaction=False) as pipe:
                for site in chunk:
                    pipe.zcard(self.queue_key(site))
                depths.update({site: int(d) for site, d in zip(chunk, await pipe.execute(), strict=True)})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.depths_key)
            nonzero = {site: d for site, d in depths.items() if d}
            if nonzero:
                pipe.zadd(self.depths_key, nonzero)
            pipe.set(self.queued_key, sum(nonzero.values()))
            await pipe.execute()
        return sum(depths.values())

    async def clear(self) -> int:
        """Delete every key of this frontier (not the seed list); returns how many."""
        deleted = 0
        pattern = self.prefix.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + ":*"
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await self.redis.delete(*batch)
                batch = []
        if batch:
            deleted += await self.redis.delete(*batch)
        return deleted
