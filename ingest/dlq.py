"""The dead-letter topic: bad messages, with their original key, value and headers, plus headers
saying why, where from and when.

    tessera-error-class      undecodable | schema | oversized
    tessera-error-reason     the message PutRecord would give (or the decoder's)
    tessera-source-topic     tessera-source-partition     tessera-source-offset
    tessera-failed-at        ISO-8601 UTC, when the consumer gave up on it

The consumer sends a batch's dead letters and waits until the broker has them all *before* it
commits the offsets past them, so that a crash never loses one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger(__name__)

ERROR_CLASS = "tessera-error-class"
ERROR_REASON = "tessera-error-reason"
SOURCE_TOPIC = "tessera-source-topic"
SOURCE_PARTITION = "tessera-source-partition"
SOURCE_OFFSET = "tessera-source-offset"
FAILED_AT = "tessera-failed-at"
VALUE_DROPPED = "tessera-value-dropped"

UNDECODABLE = "undecodable"
SCHEMA = "schema"
OVERSIZED = "oversized"

MAX_REASON_BYTES = 4096
#: Produce errors that no retry cures: the letter is sent again without its value.
_TOO_LARGE = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE}
)


class KafkaMessage(Protocol):
    """What the consumer reads of a confluent_kafka.Message (and what test doubles provide)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message refused, and why."""

    message: KafkaMessage
    error_class: str
    reason: str


class ProducerLike(Protocol):
    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...


def dead_letter_headers(letter: DeadLetter, failed_at_s: float) -> list[tuple[str, bytes]]:
    """The original headers followed by Tessera's."""
    msg = letter.message
    # A reason may quote a lone surrogate the message carried (JSON's \ud800 escape).
    reason = letter.reason.encode("utf-8", "backslashreplace")[:MAX_REASON_BYTES]
    failed_at = datetime.fromtimestamp(failed_at_s, tz=UTC).isoformat(timespec="milliseconds")
    ours = [
        (ERROR_CLASS, letter.error_class.encode()),
        (ERROR_REASON, reason),
        (SOURCE_TOPIC, (msg.topic() or "").encode()),
        (SOURCE_PARTITION, str(msg.partition()).encode()),
        (SOURCE_OFFSET, str(msg.offset()).encode()),
        (FAILED_AT, failed_at.replace("+00:00", "Z").encode()),
    ]
    original = [(k, v if v is not None else b"") for k, v in (msg.headers() or [])]
    return original + ours


class DeadLetterQueue:
    """Sends dead letters to a topic and waits for the broker's acknowledgements."""

    def __init__(self, producer: ProducerLike, topic: str, flush_timeout_s: float = 10.0) -> None:
        self._producer = producer
        self.topic = topic
        self._flush_timeout_s = flush_timeout_s

    def send(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Produce `letters` and flush; returns those the broker did not acknowledge (to send
        again later). Never raises for a broker problem."""
        if not letters:
            return []
        failed: list[DeadLetter] = []
        now = time.time()
        for letter in letters:
            self._produce(letter, now, failed, drop_value=False)
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            # Unacknowledged after the timeout: their callbacks have not run. Treat every letter
            # not yet known to be delivered as failed; a resend may duplicate some (at least once).
            log.warning("dead-letter topic '%s': %d messages unacknowledged", self.topic, remaining)
        return failed if not remaining else list(letters)

    def _produce(
        self, letter: DeadLetter, now: float, failed: list[DeadLetter], drop_value: bool
    ) -> None:
        msg = letter.message
        headers = dead_letter_headers(letter, now)
        value = msg.value()
        if drop_value:
            headers.append((VALUE_DROPPED, f"{len(value or b'')} bytes".encode()))
            value = None

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is None:
                return
            if err.code() in _TOO_LARGE and not drop_value:
                self._produce(letter, now, failed, drop_value=True)
                return
            log.warning("dead-letter topic '%s': delivery failed: %s", self.topic, err)
            failed.append(letter)

        for _ in range(100):
            try:
                self._producer.produce(
                    self.topic, value=value, key=msg.key(), headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:  # the local queue is full: let it drain
                self._producer.poll(0.1)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() in _TOO_LARGE and not drop_value:
                    self._produce(letter, now, failed, drop_value=True)
                    return
                log.warning("dead-letter topic '%s': cannot produce: %s", self.topic, exc)
                failed.append(letter)
                return
        failed.append(letter)
