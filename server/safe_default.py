"""Safe by default: a server reachable from other hosts does not run without authentication
unless its operator says so (README: Security).

`tessera serve` on a loopback address (`make run`: 127.0.0.1, the default) needs no
configuration. On any other address (`--host 0.0.0.0`, a LAN address, a name that resolves to
one) with authentication off, it refuses to start (exit 2, the message naming `--auth` and
`--insecure-no-auth`); with `--insecure-no-auth` it starts and logs a warning at once and every
`WARNING_INTERVAL_S` while it serves, so the exposure shows in every log window.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable

from tessera.server.settings import Settings

log = logging.getLogger("tessera.server")

WARNING_INTERVAL_S = 60.0


def is_loopback(host: str) -> bool:
    """Whether binding `host` reaches this machine only: a loopback address, or a name every
    address of which is loopback (an unresolvable name is not)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in infos)


def exposed_without_auth(settings: Settings) -> bool:
    return not settings.auth.enabled and not is_loopback(settings.server.host)


def refusal(settings: Settings) -> str | None:
    """Why the server must not start (None: it may)."""
    if not exposed_without_auth(settings) or settings.auth.insecure_no_auth:
        return None
    return (f"refusing to serve {settings.server.host} without authentication: anyone who "
            "reaches the ports could read, write and delete every feature group. Start with "
            "--auth (make the first admin key with `tessera keys create NAME --allow admin "
            "--data-dir DIR`), bind a loopback address (--host 127.0.0.1), or accept the risk "
            "with --insecure-no-auth")


def warn_while_exposed(settings: Settings,
                       interval_s: float = WARNING_INTERVAL_S) -> Callable[[], None]:
    """With `--insecure-no-auth` on a non-loopback address: a warning now and every
    `interval_s` until the returned function is called (a no-op otherwise)."""
    if not exposed_without_auth(settings):
        return lambda: None
    message = (f"serving {settings.server.host} WITHOUT AUTHENTICATION (--insecure-no-auth): "
               "anyone who reaches the ports can read, write and delete every feature group; "
               "start with --auth")
    log.warning(message)
    stop = threading.Event()

    def repeat() -> None:
        while not stop.wait(interval_s):
            log.warning(message)

    threading.Thread(target=repeat, name="tessera-insecure-warning", daemon=True).start()
    return stop.set
