"""A run's logs/ folder (pipelines/run/logs.py), without starting Ray: what leaves the console and what stays.

The routing swaps the process's stderr, so it runs in a child process of its own: the test sees that process's
console as a user would, untouched by the test runner's own capture of stderr.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = textwrap.dedent("""
    import logging, os, sys
    from pathlib import Path
    from pipelines.run.logs import RunLogs

    session, run = Path(sys.argv[1]), Path(sys.argv[2])
    logs = RunLogs(run / "logs")
    os.write(2, b"native stderr line\\n")  # what Ray's C++ core or a Java subprocess writes
    logging.getLogger("ray.data").info("Starting execution of Dataset 1")
    logging.getLogger("ray").warning("Token authentication is enabled")
    logging.getLogger("ray").error("a worker died")
    print("Traceback of our own", file=sys.stderr)
    logs.close(session)
    os.write(2, b"native stderr after\\n")
""")


def test_ray_messages_and_native_stderr_go_to_the_log_and_the_session_logs_are_copied(tmp_path):
    session = tmp_path / "session"
    (session / "logs" / "ray-data").mkdir(parents=True)
    (session / "logs" / "worker-1-01000000-42.out").write_text("[train] step 2/2 task=retrieval\n")
    (session / "logs" / "ray-data" / "ray-data.log").write_text("executor details\n")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(session), str(tmp_path / "run")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    console = done.stderr
    assert "Traceback of our own" in console and "a worker died" in console
    for hidden in ("native stderr line", "Starting execution", "Token authentication"):
        assert hidden not in console, hidden
    assert "native stderr after" in console  # descriptor 2 is the terminal again
    kept = (tmp_path / "run" / "logs" / "driver.log").read_text()
    for line in ("native stderr line", "Starting execution of Dataset 1", "Token authentication", "a worker died"):
        assert line in kept, line
    copied = tmp_path / "run" / "logs" / "ray"
    assert (copied / "worker-1-01000000-42.out").read_text() == "[train] step 2/2 task=retrieval\n"
    assert (copied / "ray-data" / "ray-data.log").read_text() == "executor details\n"
