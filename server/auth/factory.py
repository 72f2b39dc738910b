"""The authenticator a server's settings ask for (built once per serving process)."""

from __future__ import annotations

from tessera.server.auth import audit
from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.auth.jwt import JwtVerifier
from tessera.server.auth.keys import KeyIndex
from tessera.server.settings import Settings


def authenticator_for(settings: Settings) -> Authenticator:
    """OPEN_ACCESS with authentication off; otherwise API keys and SigV4 keys of the data dir's
    key store (`tessera keys create`) and JWTs (settings.auth.jwt_*). Also opens this
    process's audit log (`audit.configure`), with authentication on or off."""
    audit.configure(settings)
    if not settings.auth.enabled:
        return OPEN_ACCESS
    jwt = JwtVerifier.for_settings(settings.auth) if settings.auth.jwt_jwks else None
    return KeyAuthenticator(KeyIndex(settings.data_dir), jwt)
