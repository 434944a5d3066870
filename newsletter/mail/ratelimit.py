"""[smtp] rate: messages per second to one relay, for the threads of one process
(`RateLimiter`) or for every worker on every machine (`SharedRateLimiter`, its
schedule kept in the broker's Redis or in the ledger's database)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class RateLimiter:
    """A token bucket shared by all worker threads: `rate` messages per second, 0 = unlimited."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock()

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = self._clock()
            slot = max(self._next, now)
            self._next = slot + 1.0 / self.rate
        if slot > now:
            self._sleep(slot - now)


class SharedRateLimiter:
    """`rate` messages per second in total over every process that shares `reserve`.

    The same schedule as RateLimiter, kept in a store the processes share (the
    broker's Redis, or the database): `reserve(interval, tolerance)` atomically takes
    the next free slot, moves the schedule on by `interval`, and says how long to wait
    for it. Relays limit the account, not the machine.

    A slot left unused because every sender paused (a busy machine deschedules a
    process for tens of milliseconds) may be taken up to `TOLERANCE` seconds late, so
    the rate holds on average: at most rate x (T + TOLERANCE) messages in any T seconds.
    """

    TOLERANCE = 0.1

    def __init__(
        self,
        rate: float,
        reserve: Callable[[float, float], float],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._reserve = reserve
        self._sleep = sleep

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        wait = self._reserve(1.0 / self.rate, self.TOLERANCE)
        if wait > 0:
            self._sleep(wait)


# The schedule lives in one key; the server's clock is the clock of every worker.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
local earliest = now - tonumber(ARGV[2])
if slot < earliest then slot = earliest end
redis.call('SET', KEYS[1], string.format('%.6f', slot + tonumber(ARGV[1])), 'EX', 3600)
return string.format('%.6f', slot - now)
"""


class RedisReserve:
    """`reserve` for SharedRateLimiter in a Redis server (the broker's): one Lua call a message."""

    def __init__(self, url: str, key: str) -> None:
        import redis  # only with a Redis broker configured

        self.key = key
        self._client: Any = redis.Redis.from_url(url)
        self._script = self._client.register_script(_RESERVE_LUA)

    def __call__(self, interval: float, tolerance: float = 0.0) -> float:
        return float(self._script(keys=[self.key], args=[repr(interval), repr(tolerance)]))

    def close(self) -> None:
        self._client.close()
