"""A run's ``logs/`` folder: everything Ray and native code write that the console does not show.

    logs = RunLogs(run_folder / "logs")     # before ray.init (pipelines/ray_runtime.connect does this)
    ...
    logs.close(session_dir)                 # after ray.shutdown: Ray's session logs copied into logs/ray/

- ``logs/driver.log``: the driver's own Ray messages (the ``ray`` and ``ray.data`` loggers, INFO and up; the
  console keeps their errors) and whatever native code writes to the process's stderr (Ray's C++ core, the
  Java tokenizer of the caption metrics). Python's ``sys.stderr`` still writes to the terminal, so tracebacks
  and the project's own warnings stay on the console.
- ``logs/ray/``: the local Ray's session log folder (``/tmp/ray/session_*/logs``): every worker's stdout and
  stderr (``worker-*.out|err``: the training workers' progress lines, Train's, Data's and torch's messages),
  ``ray-data/``, ``train/`` and the system processes' logs.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
from pathlib import Path

DRIVER_LOG = "driver.log"
SESSION_COPY = "ray"
# The driver-side loggers Ray configures with a console handler of their own.
RAY_LOGGERS = ("ray", "ray.data")


class RunLogs:
    """Routes the driver's Ray messages and native stderr into ``folder``/driver.log until ``close``."""

    def __init__(self, folder: str | Path):
        import ray.data  # noqa: F401  (configures the "ray.data" logger now, so its console handler is seen)

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / DRIVER_LOG
        self._file = logging.FileHandler(path, encoding="utf-8")
        self._file.setLevel(logging.INFO)  # Ray Data's DEBUG records are in logs/ray/ray-data/ already
        self._file.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s -- %(message)s"))
        # File descriptor 2 → driver.log; sys.stderr → a duplicate of the terminal's descriptor.
        sys.stdout.flush()
        sys.stderr.flush()
        self._terminal_fd = os.dup(2)
        self._python_stderr = sys.stderr
        sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        # Ray's console handlers: errors only, to the terminal (they hold the stderr object of their creation).
        self._console_handlers: list[tuple[logging.StreamHandler, int, object]] = []
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                # Console handlers only: not a file, nor an in-memory capture (a test runner's log capture).
                if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                        and not isinstance(handler.stream, io.StringIO)):
                    self._console_handlers.append((handler, handler.level, handler.stream))
                    handler.setLevel(logging.ERROR)
                    handler.setStream(sys.stderr)
            logger.addHandler(self._file)

    def close(self, session_dir: str | Path | None = None) -> None:
        """Undo the routing; copy ``session_dir``/logs (a local Ray's, after it stopped) into ``logs/ray``."""
        for handler, level, stream in self._console_handlers:
            handler.setLevel(level)
            handler.setStream(stream)
        sys.stderr.flush()
        os.dup2(self._terminal_fd, 2)
        os.close(self._terminal_fd)
        sys.stderr.close()
        sys.stderr = self._python_stderr
        for name in RAY_LOGGERS:
            logging.getLogger(name).removeHandler(self._file)
        if session_dir is not None:
            try:
                shutil.copytree(Path(session_dir) / "logs", self.folder / SESSION_COPY, symlinks=True,
                                ignore_dangling_symlinks=True, dirs_exist_ok=True)
            except (shutil.Error, OSError) as error:  # a file that vanished while copying: keep the rest
                self._file.emit(logging.makeLogRecord({"msg": f"copying Ray's session logs: {error}",
                                                       "levelno": logging.WARNING, "levelname": "WARNING",
                                                       "name": __name__}))
        self._file.close()
