"""One spider's frontier sharded across ``FRONTIER_PARTITIONS`` hash-tagged partitions (docs/frontier.md).

Each partition is a complete frontier of its own (:class:`~crawler.frontier.store.FrontierStore`
under its own key prefix: queues, not-before marks, depth index, leases,
seen set, failed list, workers), so every Lua script still touches one
cluster slot. A website lives in one partition, chosen by a stable hash of
its website key (:func:`partition_of`). :class:`PartitionedStore` offers the
store's interface over all of them:

* pushes are grouped per partition: one round trip per partition a batch touches;
* each pop starts at the next partition in turn and asks the following ones
  only while it has fewer requests than it wants; a partition known to be
  empty (as of its last reply, refreshed by the heartbeat's status every
  second while busy) is skipped, so the partitions are served fairly without
  a round trip per partition;
* acknowledgements ride on the next call to their request's partition (a lease
  field names its partition: ``<i>-<pop id>.<n>``); a partition not called
  for a quarter of the lease is called anyway, so no lease expires;
* status, release, the CLI's reads and the seen set aggregate over all partitions.

With one partition (the default) the store is used exactly as before: same
key names, same calls. With N > 1, partition ``i``'s prefix is the prefix
with ``.i`` added inside its hash tag (``{spider}`` -> ``{spider.0}``, ...),
salted (``{spider.1~3}``) when needed so that partition ``i``'s cluster slot
lies in the i-th of N equal slices of the 16384 slots: masters given equal
contiguous slot ranges (``redis-cli --cluster create``) then get one
partition each. ``<prefix>:partitions`` records N; a worker or the CLI with
another N refuses to start (:class:`PartitionLayoutError`), since websites
would move to other partitions and their queued work and seen sets with them.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from crawler.frontier.store import FrontierStore, PopResult, Status

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from crawler.frontier.store import PopReceipts, PushEntry, WebsiteQueue

# Keys of a frontier written with one partition (today's layout), checked before N > 1 starts.
_LEGACY_KEYS = ("sites", "not_before", "leases", "depths", "seen", "seen:meta", "failed")
# A partition with this many acknowledgements waiting is called for them alone.
_ACK_BATCH = 64


class PartitionLayoutError(ValueError):
    """The frontier in Redis was written with another number of partitions."""


def partition_prefixes(prefix: str, n: int) -> list[str]:
    """The key prefix of each of ``n`` partitions of the frontier at ``prefix`` (module docstring)."""
    if n == 1:
        return [prefix]
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    if end <= start + 1:  # no hash tag: a single Redis only (every key would be in a slot of its own)
        return [f"{prefix}.{i}" for i in range(n)]
    out = []
    for i in range(n):
        salt = 0
        while True:
            tag = f"{i}" if not salt else f"{i}~{salt}"
            candidate = f"{prefix[:end]}.{tag}{prefix[end:]}"
            if key_slot(candidate.encode("utf-8")) * n // REDIS_CLUSTER_HASH_SLOTS == i or salt > 100_000:
                break
            salt += 1
        out.append(candidate)
    return out


def partition_of(website: str, n: int) -> int:
    """The partition of ``website``: a stable hash of its key (the same in every process, every run)."""
    if n == 1:
        return 0
    digest = hashlib.blake2b(website.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


class PartitionedStore:
    """The frontier's store over ``partitions`` partitions (module docstring)."""

    def __init__(self, redis: Redis, prefix: str, seen_spec: str = "", partitions: int = 1) -> None:
        self.redis = redis
        self.prefix = prefix
        self.layout_key = f"{prefix}:partitions"
        n = partitions
        self.partitions = [FrontierStore(redis, p, seen_spec, "" if n == 1 else f"{i}-")
                           for i, p in enumerate(partition_prefixes(prefix, n))]
        self.dead_key = self.partitions[0].dead_key
        self._sites = [0] * n  # websites with work per partition, as last heard from it
        self._start = 0  # the partition the next pop starts at
        self._acks: list[dict[str, None]] = [{} for _ in range(n)]  # waiting for their partition's next call
        self._called = [time.monotonic()] * n  # when each partition last renewed this worker's lease
        self._early: dict[int, tuple[PushEntry, bool]] = {}  # stored by a push that failed in another partition

    @property
    def calls(self) -> int:
        """Redis round trips made through this store."""
        return sum(p.calls for p in self.partitions)

    def of(self, website: str) -> FrontierStore:
        return self.partitions[partition_of(website, len(self.partitions))]

    async def check_layout(self, record: bool = True) -> None:
        """Refuse (:class:`PartitionLayoutError`) a frontier written with another number of partitions;
        ``record`` the number for a new one (N > 1 only: one partition writes no key, as before)."""
        n = len(self.partitions)
        counted = self.partitions[0]
        counted.calls += 1
        raw = await self.redis.get(self.layout_key)
        if raw is None and n > 1:
            counted.calls += 2
            if await self.redis.exists(*(f"{self.prefix}:{k}" for k in _LEGACY_KEYS)):
                raw = b"1"
            elif record and not await self.redis.set(self.layout_key, n, nx=True):
                counted.calls += 1
                raw = await self.redis.get(self.layout_key)  # another worker recorded it first
        found = int(raw) if raw is not None else n
        if found != n:
            raise PartitionLayoutError(
                f"FRONTIER_PARTITIONS={n}, but the frontier at {self.prefix} was written with {found} "
                f"partition(s): websites would move to other partitions, away from their queued requests and "
                f"seen sets. Finish (drain) this crawl with FRONTIER_PARTITIONS={found}, or delete it "
                f"(python -m crawler clear SPIDER --partitions {found} --yes), or use another FRONTIER_KEY_PREFIX")

    # -- hot path ------------------------------------------------------------

    async def push(self, entries: list[PushEntry], worker: str) -> tuple[list[bool], int]:
        """Store ``entries`` (one round trip per partition they touch); (stored flag per entry, websites with work)."""
        n = len(self.partitions)
        if n == 1:
            return await self.partitions[0].push(entries, worker)
        flags: list[bool | None] = [None] * len(entries)
        groups: dict[int, list[int]] = {}
        for k, e in enumerate(entries):
            early = self._early.pop(id(e), None)
            if early is not None and early[0] is e:
                flags[k] = early[1]
            else:
                groups.setdefault(partition_of(e.website, n), []).append(k)
        done: list[int] = []
        try:
            for i, ks in groups.items():
                stored, self._sites[i] = await self.partitions[i].push([entries[k] for k in ks], worker)
                for k, ok in zip(ks, stored, strict=True):
                    flags[k] = ok
                done += ks
        except BaseException:
            # The outbox sends the whole batch again: what is stored already is not sent twice.
            self._early.update({id(entries[k]): (entries[k], bool(flags[k])) for k in done})
            raise
        return [bool(f) for f in flags], sum(self._sites)

    def _take_acks(self, acks: list[str] | None) -> None:
        for field in acks or []:
            self._acks[int(field.split("-", 1)[0])][field] = None

    async def _call(self, i: int, call: Any) -> Any:
        """Run ``call(acks)`` on partition ``i`` with its waiting acknowledgements (kept if it fails)."""
        acks = list(self._acks[i])
        out = await call(self.partitions[i], acks)
        for field in acks:
            self._acks[i].pop(field, None)
        self._called[i] = time.monotonic()
        return out

    async def pop(self, n: int, worker: str, receipts: PopReceipts | None = None, lease: float = 0.0,
                  acks: list[str] | None = None) -> PopResult:
        """Up to ``n`` requests, from the partitions in turn (module docstring); as FrontierStore.pop."""
        count = len(self.partitions)
        if count == 1:
            return await self.partitions[0].pop(n, worker, receipts, lease, acks)
        self._take_acks(acks)
        first = self._start
        self._start = (first + 1) % count
        now_m = time.monotonic()
        merged: PopResult | None = None
        for k in range(count):
            i = (first + k) % count
            want = n - (len(merged.items) if merged else 0)
            lost = receipts is not None and any(x[0].startswith(f"{i}-") for x in receipts.lost)
            due = len(self._acks[i]) >= _ACK_BATCH or (lease > 0 and now_m - self._called[i] >= lease / 4)
            # A partition known to be empty is skipped (the heartbeat's status refreshes what is known,
            # every second while busy); when all are, the last in this turn is asked (new work may have
            # come), so every partition is asked at least once in N such pops.
            last_chance = merged is None and k == count - 1
            if not (lost or due or (want > 0 and self._sites[i]) or last_chance):
                continue
            ask = max(want, 0)
            try:
                result: PopResult = await self._call(i, lambda p, a, m=ask: p.pop(m, worker, receipts, lease, a))
            except Exception:
                if merged is None:
                    raise
                # What the partitions before gave is leased to this worker: it must reach it. The failed
                # pop is in ``receipts.lost`` and asked for again by the next pop of its partition.
                break
            self._sites[i] = result.sites_with_work
            merged = result if merged is None else _merge_pops(merged, result)
        assert merged is not None
        merged.sites_with_work = sum(self._sites)
        return merged

    async def status(self, worker: str, busy: bool, seeds_key: str | None, lease: float = 0.0,
                     acks: list[str] | None = None) -> Status:
        """The cluster view over every partition (one call each, and one for the seeds); as FrontierStore.status."""
        if len(self.partitions) == 1:
            return await self.partitions[0].status(worker, busy, seeds_key, lease, acks)
        self._take_acks(acks)
        out: Status | None = None
        for i in range(len(self.partitions)):
            st: Status = await self._call(i, lambda p, a: p.status(worker, busy, None, lease, a))
            self._sites[i] = st.sites_with_work
            out = st if out is None else Status(
                max(out.now, st.now), out.sites_with_work + st.sites_with_work, out.sites_ready + st.sites_ready,
                max((t for t in (out.last_busy, st.last_busy) if t is not None), default=None), 0,
                out.leased + st.leased, out.reclaimed + st.reclaimed)
        assert out is not None
        if seeds_key:
            self.partitions[0].calls += 1
            out.seeds = int(await self.redis.llen(seeds_key))
        return out

    async def release(self, worker: str, acks: list[str], receipts: PopReceipts | None = None) -> int:
        """A closing worker hands back what it holds, in every partition; how many requests went back."""
        if len(self.partitions) == 1:
            return await self.partitions[0].release(worker, acks, receipts)
        self._take_acks(acks)
        returned = 0
        for i in range(len(self.partitions)):
            returned += await self._call(i, lambda p, a: p.release(worker, a, receipts))
        return returned

    async def mark_not_before(self, website: str, until: float) -> float:
        return await self.of(website).mark_not_before(website, until)

    async def release_not_before(self, website: str) -> bool:
        return await self.of(website).release_not_before(website)

    async def record_failed(self, records: list[dict[str, Any]]) -> None:
        """To the failed list of each record's website's partition (one call per partition)."""
        n = len(self.partitions)
        groups: dict[int, list[dict[str, Any]]] = {}
        for r in records:
            groups.setdefault(partition_of(str(r.get("website", "")), n), []).append(r)
        for i, group in groups.items():
            await self.partitions[i].record_failed(group)

    async def pop_seeds(self, key: str, n: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
        return await self.partitions[0].pop_seeds(key, n, max_bytes)

    async def dead_letter(self, key: str, payloads: list[bytes]) -> None:
        await self.partitions[0].dead_letter(key, payloads)

    # -- for people and tests: every partition ---------------------------------

    async def seen(self, op: str, fingerprints: list[str]) -> list[int]:
        """As FrontierStore.seen, without the website: check is 1 if any partition saw it; forget
        forgets it everywhere; add goes to the first partition."""
        if op == "add" or len(self.partitions) == 1:
            return await self.partitions[0].seen(op, fingerprints)
        replies = [await p.seen(op, fingerprints) for p in self.partitions]
        return [max(col) for col in zip(*replies, strict=True)]

    async def seen_count(self) -> int:
        return sum([await p.seen_count() for p in self.partitions])

    async def queues(self) -> list[WebsiteQueue]:
        return [q for p in self.partitions for q in await p.queues()]

    async def deepest(self, n: int) -> tuple[list[tuple[str, int]], int, int]:
        parts = [await p.deepest(n) for p in self.partitions]
        top = sorted((x for part in parts for x in part[0]), key=lambda x: (-x[1], x[0]))[:n]
        return top, sum(p[1] for p in parts), sum(p[2] for p in parts)

    async def queued(self) -> int:
        return sum([await p.queued() for p in self.partitions])

    async def leases(self) -> list[tuple[str, float, int]]:
        """(worker, lease deadline, requests held) per worker and partition holding leases."""
        return [x for p in self.partitions for x in await p.leases()]

    async def reindex(self) -> int:
        return sum([await p.reindex() for p in self.partitions])

    async def clear(self) -> int:
        """Delete every key of every partition (and the layout record); not the seed list."""
        deleted = sum([await p.clear() for p in self.partitions])
        return deleted + int(await self.redis.delete(self.layout_key))

    async def failed_records(self) -> list[tuple[str, list[bytes]]]:
        """(failed list key, its records) of every partition."""
        return [(p.failed_key, await p.redis.lrange(p.failed_key, 0, -1)) for p in self.partitions]  # type: ignore[misc]

    async def workers(self) -> dict[str, float]:
        """Worker id -> last time it was busy, over every partition."""
        out: dict[str, float] = {}
        for p in self.partitions:
            raw: Any = await self.redis.zrange(p.workers_key, 0, -1, withscores=True)
            for w, t in raw:
                out[w.decode()] = max(out.get(w.decode(), 0.0), float(t))
        return out


def _merge_pops(a: PopResult, b: PopResult) -> PopResult:
    nxt = [t for t in (a.next_ready, b.next_ready) if t is not None]
    return PopResult(b.now, 0, min(nxt) if nxt else None, a.items + b.items, a.found + b.found,
                     a.reclaimed + b.reclaimed)

