"""Who may call Tessera, and what they may do (README: Security).

- `permissions`: principals and their permissions (`read:GLOB`, `write:GLOB`, `admin`), the one
  check every entry point makes (`Principal.require`).
- `authn`: the `Authenticator` seam the gRPC and HTTP edges resolve credentials through, and
  `OPEN_ACCESS` for a server with authentication off.
"""
