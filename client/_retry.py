"""Retries with exponential backoff and jitter, shared by the sync and the asyncio client.

Only transient statuses are retried: UNAVAILABLE (the server is down, restarting, or its store
refused the request for now) for every call, and DEADLINE_EXCEEDED for reads as well. Writes are
safe to retry because the online store orders records by event time: replaying a PutRecord or a
DeleteRecord with the same event time leaves the same stored state (the replay may then answer
`applied=False`, and the offline store may hold the row twice with the same event time).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from tessera.client._grpc_errors import status_code

T = TypeVar("T")

WRITE_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
READ_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class RetryPolicy:
    """At most `retries` retries after the first attempt; the n-th waits a random time between
    half and all of min(max_backoff_s, initial_backoff_s * 2**n)."""

    retries: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    def backoff_s(self, retry: int) -> float:
        """How long to wait before retry number `retry` (0-based)."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2.0**retry)
        return ceiling * (0.5 + 0.5 * self.rng.random())

    def delay_after(
        self, exc: grpc.RpcError, retry: int, codes: frozenset[grpc.StatusCode]
    ) -> float | None:
        """The wait before retrying after `exc`, or None when the call must fail now."""
        if retry >= self.retries or status_code(exc) not in codes:
            return None
        return self.backoff_s(retry)


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    codes: frozenset[grpc.StatusCode],
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """fn(), retried per `policy` on the given status codes; the last RpcError propagates."""
    retry = 0
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            delay = policy.delay_after(exc, retry, codes)
            if delay is None:
                raise
        sleep(delay)
        retry += 1


async def call_with_retry_async(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    codes: frozenset[grpc.StatusCode],
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """The coroutine version of call_with_retry: `fn` makes a new awaitable per attempt."""
    retry = 0
    while True:
        try:
            return await fn()
        except grpc.RpcError as exc:
            delay = policy.delay_after(exc, retry, codes)
            if delay is None:
                raise
        await sleep(delay)
        retry += 1
