"""Redis server CPU per request of push.lua and pop.lua, with and without the frontier's depth index.

``python -m bench.depth_index REDIS_URL OLD_PUSH_LUA OLD_POP_LUA``, the old scripts taken from
before the index (``git show ca5b8f2:crawler/frontier/lua/push.lua > /tmp/old_push.lua``, the
same for pop.lua): 50,000 requests over 1,000 websites pushed in batches of 100 and popped 64
at a time, five runs of each in turn. "spread" batches hold one request per website (the worst
case: one index update per request pushed or popped); the others one website each. The figure
is the server's own time in the scripts (``INFO commandstats`` usec of EVALSHA), per request.
FLUSHALLs the Redis it is given. Figures: bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from crawler.frontier.store import MODE_DEDUPE, FrontierStore, PushEntry

SITES, PER, BATCH, POP = 1000, 50, 100, 64
PREFIX = "{bench}"


async def _script_usec(r: Redis) -> int:
    stats: dict[str, Any] = await r.info("commandstats")
    return sum(int(v["usec"]) for k, v in stats.items() if k.startswith("cmdstat_evalsha"))


class _Old:
    """The scripts from before the index, with their own key layout."""

    def __init__(self, r: Redis, push_lua: str, pop_lua: str) -> None:
        self._push = r.register_script(push_lua)
        self._pop = r.register_script(pop_lua)

    async def push(self, batch: list[PushEntry]) -> None:
        queues: dict[str, int] = {}
        args: list[Any] = ["w", len(batch)]
        for e in batch:
            args += [queues.setdefault(e.website, 6 + len(queues)), e.website, e.fingerprint, e.mode, e.score,
                     e.not_before, e.payload]
        keys = [f"{PREFIX}:{k}" for k in ("seen", "sites", "not_before", "seq", "workers")]
        await self._push(keys=keys + [f"{PREFIX}:q:{w}" for w in queues], args=args)

    async def pop(self) -> int:
        keys = [f"{PREFIX}:{k}" for k in ("sites", "not_before", "workers", "pops:w")]
        out = await self._pop(keys=keys, args=[f"{PREFIX}:q:", POP, "w", "", 0, 0])
        return (len(out) - 4) // 2


class _New:
    def __init__(self, r: Redis) -> None:
        self.store = FrontierStore(r, PREFIX)

    async def push(self, batch: list[PushEntry]) -> None:
        await self.store.push(batch, "w")

    async def pop(self) -> int:
        return len((await self.store.pop(POP, "w")).items)


async def _run(url: str, kind: str, spread: bool, old: tuple[str, str]) -> tuple[float, float]:
    r = Redis.from_url(url)
    try:
        await r.flushall()
        await r.config_resetstat()
        pairs = ([(w, i) for i in range(PER) for w in range(SITES)] if spread
                 else [(w, i) for w in range(SITES) for i in range(PER)])
        entries = [PushEntry(f"s{w}.test", f"{w}-{i}", MODE_DEDUPE, 0, 0, b'{"u": "http://x/"}') for w, i in pairs]
        frontier = _New(r) if kind == "new" else _Old(r, *old)
        for i in range(0, len(entries), BATCH):
            await frontier.push(entries[i:i + BATCH])
        pushed = await _script_usec(r)
        popped = 0
        while n := await frontier.pop():
            popped += n
        assert popped == len(entries)
        return pushed / len(entries), (await _script_usec(r) - pushed) / popped
    finally:
        await r.aclose()


async def main(url: str, old_push: str, old_pop: str) -> None:
    old = (Path(old_push).read_text(encoding="utf-8"), Path(old_pop).read_text(encoding="utf-8"))
    for spread in (True, False):
        results: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
        for _ in range(5):
            for kind, runs in results.items():
                runs.append(await _run(url, kind, spread, old))
        for kind, runs in results.items():
            print(f"{'spread' if spread else 'one website per batch'} {kind}: push "
                  f"{statistics.median(p for p, _ in runs):.2f} us/request, pop "
                  f"{statistics.median(p for _, p in runs):.2f} us/request (median of {len(runs)})")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
