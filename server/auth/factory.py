"""The authenticator a server's settings ask for (built once per serving process)."""

from __future__ import annotations

import logging

from tessera.server.auth import audit
from tessera.server.auth.authenticator import KeyAuthenticator
from tessera.server.auth.authn import OPEN_ACCESS, Authenticator
from tessera.server.auth.jwt import JwtVerifier
from tessera.server.auth.keys import KeyIndex
from tessera.server.settings import Settings

log = logging.getLogger(__name__)


def authenticator_for(settings: Settings) -> Authenticator:
    """OPEN_ACCESS with authentication off; otherwise API keys and SigV4 keys of the data dir's
    key store (`tessera keys create`) and JWTs (settings.auth.jwt_*). Also opens this
    process's audit log (`audit.configure`), with authentication on or off."""
    audit.configure(settings)
    if not settings.auth.enabled:
        return OPEN_ACCESS
    jwt = JwtVerifier.for_settings(settings.auth) if settings.auth.jwt_jwks else None
    if jwt is None and (settings.auth.jwt_issuer or settings.auth.jwt_audience):
        log.warning("--jwt-issuer / --jwt-audience are set but --jwt-jwks is not: JWTs are "
                    "refused (reason jwt_not_configured) until the issuer's JWKS is given")
    keys = KeyIndex(settings.data_dir)
    if jwt is None and not keys.current().by_hash and not keys.current().by_access_key:
        log.warning("authentication is on but %s holds no key and no --jwt-jwks is set: every "
                    "call is refused until a key is made (tessera keys create admin --allow "
                    "admin --data-dir %s)", keys.path, settings.data_dir)
    return KeyAuthenticator(keys, jwt)
