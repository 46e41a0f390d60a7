"""A run's logs/ folder (pipelines/run_logs.py), without starting Ray: what leaves the console and what stays."""

import logging
import os
import sys

from pipelines.run_logs import RunLogs


def test_ray_messages_and_native_stderr_go_to_the_log_and_the_session_logs_are_copied(tmp_path, capfd):
    session = tmp_path / "session"
    (session / "logs" / "ray-data").mkdir(parents=True)
    (session / "logs" / "worker-1-01000000-42.out").write_text("[train] step 2/2 task=retrieval\n")
    (session / "logs" / "ray-data" / "ray-data.log").write_text("executor details\n")

    logs = RunLogs(tmp_path / "run" / "logs")
    os.write(2, b"native stderr line\n")  # what Ray's C++ core or a Java subprocess writes
    logging.getLogger("ray.data").info("Starting execution of Dataset 1")
    logging.getLogger("ray").warning("Token authentication is enabled")
    logging.getLogger("ray").error("a worker died")
    print("Traceback of our own", file=sys.stderr)
    logs.close(session)
    os.write(2, b"native stderr after\n")

    console = capfd.readouterr().err
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
