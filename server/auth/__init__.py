"""Who may call Tessera, and what they may do (README: Security).

- `permissions`: principals and their permissions (`read:GLOB`, `write:GLOB`, `admin`), the one
  check every entry point makes (`Principal.require`).
- `authn`: the `Authenticator` seam the gRPC and HTTP edges resolve credentials through, and
  `OPEN_ACCESS` for a server with authentication off.
- `keys`: the key store in `<data-dir>/auth/` (API keys hashed, SigV4 secrets encrypted) that
  `tessera keys` (server/cli_keys.py) and the HTTP key routes (server/http_keys.py) write and
  every serving process reads; `jwt`: JWT / OIDC bearer tokens verified against a JWKS;
  `authenticator`: the `Authenticator` of `--auth` over both; `factory.authenticator_for`:
  the one a server's settings ask for.
- `audit`: the audit log (`audit.record`), one JSON line per admin action, key change and
  denied call.
"""
