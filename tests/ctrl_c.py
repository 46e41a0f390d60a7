"""Children that a test stops with Ctrl+C (SIGINT) start with SIGINT's default action, as from a terminal.

A process started in the background of a non-interactive shell (``make test &``, ``nohup``, some CI runners)
ignores SIGINT, and every child inherits that: Python then installs no KeyboardInterrupt handler, so
``serve run`` or ``ray start --block`` never heard the test's Ctrl+C and was killed after the whole wait
(90 s and 60 s per fixture in such runs), leaving its Ray to exit on its own."""

from __future__ import annotations

import signal


def sigint_as_from_a_terminal() -> None:
    """``subprocess.Popen(preexec_fn=...)``: runs in the child before it executes the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
