"""Read-your-writes tokens: the one place they are built and parsed.

Every write acknowledgement (PutRecord, PutRecords, DeleteRecord) carries a `write_token`; a read
that passes one back as `consistent_after` never sees state older than that write. A token holds
the commit sequence number of the write (`Committed.seq`, server/store.py: RocksDB's own
sequence number of the primary). On the wire it is an opaque, fixed-size string: the base64url
text of a version byte and the 8-byte big-endian sequence number ("AQAAAAAAAAAq" is commit 42).
Clients must not read anything into it; the version byte lets its content grow (for instance a
sequence per partition, when the keyspace is split across nodes) without breaking old clients,
which only store and pass tokens along.

Why the token carries no identity of the store (a data directory's id): the guarantee it asks
for is a lower bound on freshness of the store that issued it, and the two ways a foreign token
can reach a store are both answered without one. A token ahead of everything the store ever
committed cannot come from it: the single-process store answers FAILED_PRECONDITION at once.
A foreign token behind the store's sequence asks for nothing the store has not already passed:
the read returns the current state, exactly what a read without a token returns; it cannot
return anything older than a token-less read would. An identity would buy a clearer error in
that one misconfiguration (one client's writes and reads sent to two unrelated Tessera
deployments), at the price of every store implementation (the multi-process writer, the
secondary readers) publishing and agreeing on an id, and a longer token on every write and
read. The version byte leaves room to add one later if multi-node deployments need it.
"""

from __future__ import annotations

import base64
import binascii
import struct

from tessera.core.errors import InvalidRequestError

_VERSION = 1
_LAYOUT = struct.Struct(">BQ")  # version, commit sequence number
_TEXT_SIZE = 12  # base64 of the 9 bytes above, no padding needed


def encode_token(seq: int) -> str:
    """The wire token of commit sequence number `seq` (0 <= seq < 2**64)."""
    return base64.urlsafe_b64encode(_LAYOUT.pack(_VERSION, seq)).decode("ascii")


def decode_token(text: str, field: str = "token") -> int:
    """The commit sequence number a token carries; InvalidRequestError naming `field` when
    `text` is not a token Tessera issued."""
    if len(text) != _TEXT_SIZE:
        raise _garbage(text, field)
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _garbage(text, field) from None
    # Only the text encode_token makes (b64decode also takes '+', '/' and stray characters).
    if len(raw) != _LAYOUT.size or base64.urlsafe_b64encode(raw) != text.encode("ascii"):
        raise _garbage(text, field)
    version, seq = _LAYOUT.unpack(raw)
    if version != _VERSION:
        raise InvalidRequestError(
            f"{field} {_shown(text)} is a token of version {version}, which this Tessera does "
            f"not know (it knows version {_VERSION}); was it issued by a newer server?"
        )
    return int(seq)


def latest(a: str | None, b: str | None) -> str | None:
    """The newer of two tokens (None: no token); for a client keeping its latest write's."""
    if a is None:
        return b
    if b is None:
        return a
    return b if decode_token(b) > decode_token(a) else a


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _garbage(text: str, field: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"{field} {_shown(text)} is not a write token: pass back the write_token of a write "
        "acknowledgement (PutRecord, PutRecords, DeleteRecord) as it was received"
    )
