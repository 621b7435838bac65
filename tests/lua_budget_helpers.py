"""Shared pieces of the byte budget's Lua tests: a thin caller of the scripts, the server's clock."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from middlewares.byte_budget.store import load_script, website_keys

if TYPE_CHECKING:
    import redis


PREFIX = "t"
SITE = "shop-a.test"
LEASE = 30.0
RETRY = 0.25


class Budget:
    """Thin caller of the two scripts, as the middleware calls them."""

    def __init__(self, r: redis.Redis, budget: int, window: float, site: str = SITE) -> None:
        self.r = r
        self.budget = budget
        self.window = window
        self.keys = website_keys(PREFIX, site)
        self._reserve = load_script(r, "reserve")
        self._draw = load_script(r, "draw")
        self._settle = load_script(r, "settle")

    def reserve(self, n: int = 0, lease: float = LEASE, default_estimate: int = 5000, holder: str = "",
                overdraft: bool = False, stop_slack: int = 0, downloads: int = 1) -> dict[str, Any]:
        res = self._reserve(keys=self.keys, args=[self.budget, self.window, n, default_estimate, lease, RETRY,
                                                  downloads, holder, int(overdraft), stop_slack])
        if int(res[0]):
            return {"granted": True, "member": res[1].decode(), "now": float(res[2]), "n": int(res[3]),
                    "amount": int(res[4]), "overdraft": int(res[5])}
        return {"granted": False, "not_before": float(res[1]), "now": float(res[2]), "n": int(res[3]),
                "warn": int(res[4]), "timed": int(res[6])}

    def draw(self, amount: int, holder: str) -> dict[str, Any]:
        res = self._draw(keys=self.keys, args=[self.budget, self.window, amount, LEASE, holder, 0])
        if int(res[0]):
            return {"granted": True, "member": res[1].decode(), "now": float(res[2]), "overdraft": int(res[3])}
        return {"granted": False, "now": float(res[2])}

    def settle(self, member: str | list[str], size: int, learn: int = -1, holder: str = "") -> float:
        members = ",".join(member) if isinstance(member, list) else member
        res = self._settle(keys=self.keys, args=[members, size, self.window, LEASE, holder, 0.9, learn])
        return float(res[0])

    def used(self) -> float:
        return float(self.r.hget(self.keys[2], "used") or 0)


def server_time(r: redis.Redis) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


def wait_until_server_time(r: redis.Redis, t: float) -> None:
    while (delta := t - server_time(r)) > 0:
        time.sleep(delta + 0.005)
