"""The seam between the edges (gRPC metadata, HTTP headers) and the ways a caller proves who it
is. An edge hands the `authorization` value it received (gRPC metadata or HTTP header, None when
absent) to `Authenticator.authenticate` and gets a `Principal`, or UnauthenticatedError with a
reason (the label of tessera_auth_failures_total). SigV4 (the SageMaker-compatible endpoints)
signs the whole request, so the HTTP edge calls `authenticate_sigv4` with the request's parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tessera.server.auth.permissions import LOCAL, Principal


class Authenticator(Protocol):
    #: False: every call is `LOCAL` (authentication off); the edges then skip their checks.
    enabled: bool

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of `Authorization: Bearer <API key or JWT>`; UnauthenticatedError
        (reason: missing, malformed, unknown, revoked, expired, bad_signature, ...)."""
        ...

    def authenticate_sigv4(
        self, method: str, raw_path: str, query: str, headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Principal:
        """The principal of an AWS SigV4-signed request (`tessera keys create --sigv4`);
        UnauthenticatedError otherwise."""
        ...


class OpenAccess:
    """Authentication off: every caller is `LOCAL`."""

    enabled = False

    def authenticate(self, authorization: str | None) -> Principal:
        return LOCAL

    def authenticate_sigv4(
        self, method: str, raw_path: str, query: str, headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> Principal:
        return LOCAL


OPEN_ACCESS: Authenticator = OpenAccess()
