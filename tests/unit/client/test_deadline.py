"""A call's deadline bounds its retries: reads cancelled or past their deadline are retried while
time remains, and a call out of time raises DeadlineExceededError (sync and asyncio alike)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tessera.client._retry import (
    READ_RETRY_CODES,
    WRITE_RETRY_CODES,
    Deadline,
    RetryPolicy,
    call_with_retry,
    call_with_retry_async,
)
from tessera.core.errors import DeadlineExceededError


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


class Attempts:
    """Fails with the given codes in order (each attempt taking `took_s`), then answers 'ok';
    records each attempt's timeout."""

    def __init__(self, clock: Clock, deadline: Deadline, *codes: grpc.StatusCode,
                 took_s: float = 0.0) -> None:
        self.clock, self.deadline, self.codes, self.took_s = clock, deadline, list(codes), took_s
        self.timeouts: list[float] = []

    def __call__(self) -> str:
        self.timeouts.append(self.deadline.attempt_timeout_s())
        self.clock.now += self.took_s
        if self.codes:
            raise FakeRpcError(self.codes.pop(0), "server says no")
        return "ok"


POLICY = RetryPolicy(retries=3, initial_backoff_s=0.01, max_backoff_s=0.02)


def test_a_cancelled_read_with_time_left_is_retried_within_the_deadline() -> None:
    clock = Clock()
    deadline = Deadline(1.0, clock)
    call = Attempts(clock, deadline, grpc.StatusCode.CANCELLED, took_s=0.1)
    assert call_with_retry(call, POLICY, READ_RETRY_CODES, clock.sleep, deadline) == "ok"
    assert len(call.timeouts) == 2
    assert call.timeouts[0] == 1.0 and 0.85 < call.timeouts[1] < 0.9  # the time that remained


def test_a_read_out_of_time_raises_deadline_exceeded_whether_cancelled_or_deadline() -> None:
    for code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
        clock = Clock()
        deadline = Deadline(0.5, clock)
        call = Attempts(clock, deadline, code, code, code, took_s=0.5)
        with pytest.raises(DeadlineExceededError, match=r"GetRecord did not complete within "
                                                        r"its deadline of 0.5 s \(1 attempt"):
            call_with_retry(call, POLICY, READ_RETRY_CODES, clock.sleep, deadline, "GetRecord")
        assert len(call.timeouts) == 1  # no retry: no time left


def test_a_write_past_its_deadline_is_not_retried_and_raises_deadline_exceeded() -> None:
    clock = Clock()
    deadline = Deadline(5.0, clock)
    call = Attempts(clock, deadline, grpc.StatusCode.DEADLINE_EXCEEDED, took_s=0.1)
    with pytest.raises(DeadlineExceededError):
        call_with_retry(call, POLICY, WRITE_RETRY_CODES, clock.sleep, deadline, "PutRecord")
    assert len(call.timeouts) == 1


def test_no_retry_whose_backoff_would_end_after_the_deadline() -> None:
    clock = Clock()
    deadline = Deadline(0.105, clock)
    slow = RetryPolicy(retries=3, initial_backoff_s=1.0, max_backoff_s=1.0)
    call = Attempts(clock, deadline, grpc.StatusCode.UNAVAILABLE, took_s=0.1)
    with pytest.raises(FakeRpcError):  # UNAVAILABLE, not a deadline: the error as it is
        call_with_retry(call, slow, READ_RETRY_CODES, clock.sleep, deadline)
    assert len(call.timeouts) == 1


def test_the_asyncio_retry_keeps_the_same_deadline_rules() -> None:
    clock = Clock()

    async def sleep(s: float) -> None:
        clock.sleep(s)

    async def run(deadline: Deadline, call: Attempts) -> str:
        async def attempt() -> str:
            return call()

        return await call_with_retry_async(
            attempt, POLICY, READ_RETRY_CODES, sleep, deadline, "BatchGetRecord"
        )

    deadline = Deadline(1.0, clock)
    assert asyncio.run(run(deadline, Attempts(clock, deadline, grpc.StatusCode.CANCELLED))) == "ok"
    deadline = Deadline(0.2, clock)
    late = Attempts(clock, deadline, grpc.StatusCode.DEADLINE_EXCEEDED, took_s=0.2)
    with pytest.raises(DeadlineExceededError, match="BatchGetRecord"):
        asyncio.run(run(deadline, late))
