"""The gRPC channel a client holds for its lifetime (sync or asyncio)."""

from __future__ import annotations

import grpc
import grpc.aio

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Pings only while calls are in flight (permit_without_calls off), so that a server with gRPC's
#: default ping policy never answers GOAWAY "too_many_pings"; a dead connection under a call
#: is noticed within keepalive time + timeout.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
)


def open_channel(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A sync channel to `target` ('host:port'); TLS when `credentials` are given."""
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def open_aio_channel(
    target: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to `target`; open it inside the event loop that will use it."""
    if credentials is not None:
        return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
