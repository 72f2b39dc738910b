"""`tessera keys`: API keys and SigV4 keys (README: Security).

    tessera keys create NAME --allow PERM [--allow PERM ...] [--sigv4] [--expires-in 30d]
    tessera keys list
    tessera keys revoke NAME

each with `--data-dir DIR` (the key store of a data directory, the server running or stopped:
how the first admin key is made) or `--http URL --api-key ADMIN_KEY [--tls-ca PATH]` (a running
server's HTTP routes, server/http_keys.py). PERM is `read:GLOB`, `write:GLOB` or `admin`.
`create` prints the secret once, on the last line of stdout (for `--sigv4`:
`ACCESS_KEY_ID SECRET`); `list` never shows a secret. A bad option or PERM exits 2 with the
message; a refusal by the server (401, 403, 404, 409) exits 2 too, with the server's message.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import ssl
import sys
from pathlib import Path
from typing import Any

from tessera.core.errors import ConflictError, InvalidRequestError, NotFoundError
from tessera.server.auth.keys import CreatedKey, KeyInfo, KeyStore
from tessera.server.auth.permissions import parse_permissions


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `tessera keys create|list|revoke` to the `tessera` parser."""
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_argument_group("which key store (one of)")
    group.add_argument("--data-dir", type=Path,
                       help="a data directory's key store (server stopped or running)")
    group.add_argument("--http", help="a running server's base URL (e.g. http://127.0.0.1:8080)")
    group.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"),
                       help="with --http: an admin API key (default $TESSERA_API_KEY)")
    group.add_argument("--tls-ca", type=Path, help="with --http: CA bundle (PEM) of the server")
    group.add_argument("--tls-cert", type=Path, help="with --http: client certificate (mTLS)")
    group.add_argument("--tls-key", type=Path, help="with --http: the client certificate's key")

    keys = sub.add_parser("keys", help="create, list and revoke API keys and SigV4 keys")
    cmds = keys.add_subparsers(dest="keys_command", required=True)
    create = cmds.add_parser("create", parents=[where],
                             help="make a key; prints its secret once, on the last line")
    create.add_argument("name")
    create.add_argument("--allow", action="append", required=True, metavar="PERM",
                        help="read:GLOB, write:GLOB or admin (repeat for several)")
    create.add_argument("--sigv4", action="store_true",
                        help="an AWS SigV4 access key id and secret (the SageMaker APIs)")
    create.add_argument("--expires-in", metavar="DURATION", type=_duration_s,
                        help="refuse the key after this long: e.g. 3600, 90m, 12h, 30d "
                             "(default: never; revoke it to stop it earlier)")
    create.set_defaults(func=_create)
    listing = cmds.add_parser("list", parents=[where], help="every key, without secrets")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.set_defaults(func=_list)
    revoke = cmds.add_parser("revoke", parents=[where],
                             help="revoke a key: refused from the next call on")
    revoke.add_argument("name")
    revoke.set_defaults(func=_revoke)


def _create(args: argparse.Namespace) -> int:
    parse_permissions(args.allow)  # a bad PERM: exit 2 before anything is asked or written
    if args.data_dir is not None:
        _offline_only(args)
        created = KeyStore(args.data_dir).create(args.name, args.allow, sigv4=args.sigv4,
                                                 expires_in_s=args.expires_in)
        _audit_offline(args.data_dir, "CreateKey", args.name)
    else:
        doc = _call(args, "POST", "/v1/keys",
                    {"name": args.name, "permissions": args.allow, "sigv4": args.sigv4,
                     "expires_in_s": args.expires_in})
        created = CreatedKey(_info(doc["key"]), doc["secret"])
    info = created.info
    expiry = f" (expires {info.expires_at})" if info.expires_at else ""
    print(f"created {info.kind} '{info.name}': {' '.join(info.permissions)}{expiry}")
    if info.access_key_id is not None:
        print("the secret access key is shown this once; the last line is "
              "ACCESS_KEY_ID SECRET_ACCESS_KEY:")
    else:
        print("the key is shown this once (send it as 'Authorization: Bearer <key>' or "
              "TESSERA_API_KEY):")
    print(created.secret_line, flush=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        _offline_only(args)
        infos = KeyStore(args.data_dir).list()
    else:
        infos = [_info(k) for k in _call(args, "GET", "/v1/keys")["keys"]]
    if args.json:
        print(json.dumps({"keys": [k.to_json() for k in infos]}, indent=1))
        return 0
    rows = [("NAME", "KIND", "PERMISSIONS", "CREATED", "EXPIRES", "REVOKED", "ACCESS KEY ID")]
    rows += [(k.name, k.kind, ",".join(k.permissions), k.created_at, k.expires_at or "-",
              k.revoked_at or "-", k.access_key_id or "-") for k in infos]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        _offline_only(args)
        info = KeyStore(args.data_dir).revoke(args.name)
        _audit_offline(args.data_dir, "RevokeKey", args.name)
    else:
        info = _info(_call(args, "DELETE", f"/v1/keys/{args.name}")["key"])
    print(f"revoked {info.kind} '{info.name}' at {info.revoked_at}")
    return 0


def _offline_only(args: argparse.Namespace) -> None:
    if args.http is not None:
        raise InvalidRequestError("give --data-dir DIR (the key store itself) or --http URL "
                                  "(a running server), not both")


def _audit_offline(data_dir: Path, action: str, name: str) -> None:
    """A key change made on the files is audited like one made over HTTP; the principal is
    the operator's OS user (whoever can write the data directory)."""
    from tessera.server.auth import audit
    from tessera.server.settings import Settings

    settings = Settings().model_copy(update={"data_dir": data_dir})
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = str(os.getuid())
    audit.AuditLog(audit.path_for(settings)).record(f"local:{user}", action, None,
                                                    audit.ALLOWED, key=name)


def _info(doc: dict[str, Any]) -> KeyInfo:
    return KeyInfo(doc["name"], doc["kind"], tuple(doc["permissions"]), doc["created_at"],
                   doc.get("revoked_at"), doc.get("access_key_id"), doc.get("expires_at"))


_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


def _duration_s(text: str) -> float:
    """`--expires-in`: seconds, or a number with s, m, h or d."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a positive number of seconds, or with s, m, h or d "
            "(e.g. 90m, 12h, 30d)")
    return float(m.group(1)) * _UNITS_S[m.group(2)]


def _call(args: argparse.Namespace, method: str, path: str,
          body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request to the server's key routes; a refusal raises the error class of its status
    (exit 2 with the server's message)."""
    import httpx

    if args.http is None:
        raise InvalidRequestError("which key store? give --data-dir DIR (the key store itself, "
                                  "server stopped or running) or --http URL (a running server)")
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    verify: ssl.SSLContext | bool = True
    tls = args.tls_ca is not None or args.tls_cert is not None
    if tls and not args.http.startswith("https://"):
        raise InvalidRequestError(
            f"--http {args.http} is not https:// but TLS options were given (--tls-ca / "
            "--tls-cert): use the https:// URL (the key would otherwise go in clear text)")
    if tls:
        verify = ssl.create_default_context(
            cafile=str(args.tls_ca) if args.tls_ca is not None else None)
        if args.tls_cert is not None:
            verify.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        response = httpx.request(method, args.http.rstrip("/") + path, json=body,
                                 headers=headers, verify=verify, timeout=30.0)
    except httpx.HTTPError as exc:
        print(f"tessera: cannot reach {args.http}: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    if response.is_success:
        return dict(response.json())
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    status = response.status_code
    if status in (401, 403):
        print(f"tessera: HTTP {status}: {message}", file=sys.stderr)
        raise SystemExit(2)
    if status == 404:
        raise NotFoundError(message)
    if status == 409:
        raise ConflictError(message)
    if status in (400, 422):
        raise InvalidRequestError(message)
    print(f"tessera: HTTP {status}: {message}", file=sys.stderr)
    raise SystemExit(1)
