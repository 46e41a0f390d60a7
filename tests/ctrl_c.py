"""Children that a test stops with Ctrl+C (SIGINT), as a user stops ``serve run`` or ``ray start --block``.

They start with SIGINT's default action, as from a terminal: a process started in the background of a
non-interactive shell (``make test &``, ``nohup``, some CI runners) ignores SIGINT, and every child inherits that.
Python then installs no KeyboardInterrupt handler, so the child never heard the test's Ctrl+C and was killed only
after the whole wait (90 s and 60 s per fixture in such runs)."""

from __future__ import annotations

import os
import signal
import subprocess


def sigint_as_from_a_terminal() -> None:
    """``subprocess.Popen(preexec_fn=...)``: runs in the child before it executes the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def press_ctrl_c(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGINT, then the process group killed if the child has not exited within ``timeout_s`` (the child was
    started with ``start_new_session=True``: its group holds what it started)."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
