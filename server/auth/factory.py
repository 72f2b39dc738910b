"""The authenticator a server's settings ask for (built once per serving process)."""

from __future__ import annotations

from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.settings import Settings


def authenticator_for(settings: Settings) -> Authenticator:
    """OPEN_ACCESS with authentication off; otherwise API keys (the data dir's key store),
    JWTs (settings.auth.jwt_*) and SigV4 keys."""
    if not settings.auth.enabled:
        return OPEN_ACCESS
    raise NotImplementedError("authentication (--auth) is being built: server/auth/keys.py")
