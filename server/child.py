"""Run a module as a child of the `tessera serve --workers N` supervisor (server/supervisor.py):
`python -m tessera.server.child <module> [args...]`.

Before the module runs, the child asks the kernel to SIGKILL it when the supervisor dies
(PR_SET_PDEATHSIG), so a supervisor killed with -9 leaves no child behind; a supervisor that
died before that request landed is noticed at once (the parent is no longer the one named in
TESSERA_SUPERVISOR_PID) and the child exits. Linux only, like SO_REUSEPORT's load balancing.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

SUPERVISOR_PID = "TESSERA_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when the process that started it dies (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    expected = os.environ.get(SUPERVISOR_PID)
    if expected is not None and os.getppid() != int(expected):
        os._exit(1)  # the supervisor died before the request took effect


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tessera.server.child <module> [args...]")
    die_with_parent()
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
