"""Retries with exponential backoff and jitter, shared by the sync and the asyncio client.

Only transient statuses are retried: UNAVAILABLE (the server is down, restarting, or its store
refused the request for now) for every call, and DEADLINE_EXCEEDED and CANCELLED for reads as well
(idempotent: a read cancelled by a draining server is simply asked again). Writes are safe to
retry on UNAVAILABLE because the online store orders records by event time: replaying a PutRecord
or a DeleteRecord with the same event time leaves the same stored state (the replay may then
answer `applied=False`, and the offline store may hold the row twice with the same event time).

A `Deadline` bounds a call and all its retries: each attempt gets the time that remains, a retry
is made only if its backoff ends before the deadline, and a call whose deadline passed (the
server or the channel answering DEADLINE_EXCEEDED or CANCELLED when no time is left, or a write
answered DEADLINE_EXCEEDED) raises DeadlineExceededError, the same in the sync and asyncio client.
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
from tessera.core.errors import DeadlineExceededError

T = TypeVar("T")

WRITE_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
READ_RETRY_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
#: The statuses of a call that ran out of time (a server past the deadline may cancel the call).
_OUT_OF_TIME = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


def rpc_name(method: object) -> str:
    """The RPC a stub method calls ('GetRecord'), for messages."""
    path = getattr(method, "_method", None)  # grpc's multi-callables keep their method path
    if isinstance(path, bytes):
        path = path.decode()
    return path.rsplit("/", 1)[-1] if isinstance(path, str) and path else "the call"


class Deadline:
    """The deadline of one call, its retries included."""

    def __init__(
        self, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._end = clock() + timeout_s
        self.attempts = 0

    def remaining_s(self) -> float:
        return max(0.0, self._end - self._clock())

    def attempt_timeout_s(self) -> float:
        """The timeout of the next attempt: what remains (counted as an attempt)."""
        self.attempts += 1
        return self.remaining_s()

    def check(
        self, exc: grpc.RpcError, delay: float | None, what: str
    ) -> float | None:
        """`delay` if a retry after it still ends before the deadline; else None, having raised
        DeadlineExceededError if the call ran out of time."""
        code = status_code(exc)
        if delay is not None and delay < self.remaining_s():
            return delay
        out_of_time = code is grpc.StatusCode.DEADLINE_EXCEEDED or (
            code in _OUT_OF_TIME and self.remaining_s() <= 0.0
        )
        if out_of_time:
            details_fn = getattr(exc, "details", None)
            details = details_fn() if callable(details_fn) else None
            raise DeadlineExceededError(
                f"{what} did not complete within its deadline of {self.timeout_s:g} s "
                f"({self.attempts} attempt(s); last answer: "
                f"{code.name if code else 'UNKNOWN'}: {details or 'no details'})"
            ) from exc
        return None


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
    deadline: Deadline | None = None,
    what: str = "the call",
) -> T:
    """fn(), retried per `policy` on the given status codes, within `deadline` if given (`fn`
    then takes its attempt's timeout from it); the last RpcError propagates, or
    DeadlineExceededError once the deadline passed."""
    retry = 0
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            delay = policy.delay_after(exc, retry, codes)
            if deadline is not None:
                delay = deadline.check(exc, delay, what)
            if delay is None:
                raise
        sleep(delay)
        retry += 1


async def call_with_retry_async(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    codes: frozenset[grpc.StatusCode],
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    deadline: Deadline | None = None,
    what: str = "the call",
) -> T:
    """The coroutine version of call_with_retry: `fn` makes a new awaitable per attempt."""
    retry = 0
    while True:
        try:
            return await fn()
        except grpc.RpcError as exc:
            delay = policy.delay_after(exc, retry, codes)
            if deadline is not None:
                delay = deadline.check(exc, delay, what)
            if delay is None:
                raise
        await sleep(delay)
        retry += 1
