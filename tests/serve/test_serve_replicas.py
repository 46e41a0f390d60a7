"""Two model replicas (fractional CPUs) started as the README says, `serve run serve.app:build_app ...` in a shell
with nothing exported (its own local Ray, as on a laptop): requests spread over both, and every request is answered
while one is SIGKILLed under load and replaced.

A replica is the HTTP ingress itself (one hop), so a request the killed replica was working on is answered by
Serve's proxy, which does not retry a request a replica accepted: our proxy middleware (serve.proxy_errors, which
serve.app puts in the environment `serve run` starts Ray with) makes that the app's JSON 503 with Retry-After,
saying the replica was lost. A request whose replica died after reading its body but before Serve's router heard
it accept is re-sent to a live replica without its body: that replica answers 503 with Retry-After once no body has
come for serve.requests.BODY_START_TIMEOUT_S. Every other request is answered 200 by a live replica, or 503 with
Retry-After when they are full. No 500, no hang, no other shape. The test prints the counts.

`serve run` is stopped (Ctrl+C) at the end of the module, taking its Ray with it.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
from PIL import Image

from serve.local_run import wait_ready

from ctrl_c import press_ctrl_c, sigint_as_from_a_terminal

ROOT = Path(__file__).resolve().parents[2]
REPLICAS = 2
CLIENTS = 6
URL = "http://127.0.0.1:8000"  # serve run's own address


@pytest.fixture(scope="module")
def base_url(tiny_checkpoint, tmp_path_factory):
    # A user's shell: none of the test session's Ray settings, no proxy variable; a Ray temp folder of its own
    # (short: Ray's socket paths) so that nothing another test's cluster left behind is joined.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "UNIP2_"))}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    log = tmp_path_factory.mktemp("serve_run") / "serve_run.log"
    command = [str(Path(sys.executable).parent / "serve"), "run", "serve.app:build_app", f"checkpoint={tiny_checkpoint}",
               f"min_replicas={REPLICAS}", "model_num_cpus=0.5", "ingress_num_cpus=0.25", "max_batch_size=4",
               "max_ongoing_requests=4", "max_queued_requests=4", "warmup=false"]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=sigint_as_from_a_terminal)
    try:
        wait_ready(URL, 300)
        wait_for_replicas(REPLICAS)
        yield URL
    finally:
        press_ctrl_c(process, timeout_s=90)  # serve run shuts the app and its Ray down
        print("\n[serve run] " + "\n[serve run] ".join(log.read_text(errors="replace").splitlines()[-5:]))


def replica_processes() -> dict[int, str]:
    """PID → command line of every model replica process of `serve run`'s app ("default")."""
    found = subprocess.run(["pgrep", "-af", "ServeReplica:default:Model"], capture_output=True, text=True).stdout
    return {int(line.split()[0]): line for line in found.splitlines() if line.strip()}


def wait_for_replicas(count: int, timeout_s: float = 180.0) -> set[str]:
    """Until ``count`` replicas have answered (their X-Replica names) → the names."""
    deadline, seen = time.monotonic() + timeout_s, set()
    while len(seen) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} replicas answered after {timeout_s:.0f} s: {seen}")
        response = classify(URL)
        if response.status_code == 200:
            seen.add(response.headers["x-replica"])
    return seen


IMAGE = io.BytesIO()
Image.new("RGB", (80, 60), (30, 160, 90)).save(IMAGE, format="PNG")


def classify(base_url: str) -> requests.Response:
    return requests.post(base_url + "/v1/classify", files={"image": IMAGE.getvalue()}, data={"top_k": "2"},
                         timeout=120)


def test_requests_spread_over_both_replicas(base_url):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda _: classify(base_url), range(36)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    answered_by = Counter(r.headers["x-replica"] for r in responses)
    assert len(answered_by) == REPLICAS, answered_by
    # Every replica is the ingress itself: the one that answered is the one whose timings come back.
    assert all("model;dur=" in r.headers["server-timing"] for r in responses)


def test_every_request_is_answered_while_a_replica_is_killed_and_replaced(base_url, capsys):
    from serve.proxy_errors import MESSAGE as REPLICA_LOST

    answers: list[tuple[int, str | None, str | None, dict | None]] = []
    sent = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            sent.append(1)
            response = classify(base_url)  # a connection error or a hang (timeout) fails the test
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") \
                else None
            answers.append((response.status_code, response.headers.get("retry-after"),
                            response.headers.get("x-replica"), body))

    clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        while len({replica for code, _, replica, _ in answers if code == 200}) < REPLICAS:
            time.sleep(0.1)
        before = {replica for code, _, replica, _ in answers if code == 200}
        processes = replica_processes()
        assert len(processes) == REPLICAS, processes
        os.kill(min(processes), signal.SIGKILL)  # one replica's process, outright, under load
        killed_at = len(answers)
        deadline = time.monotonic() + 180
        # Keep the load on until a new replica answers in place of the killed one.
        while not {replica for _, _, replica, _ in answers[killed_at:]} - before - {None}:
            if time.monotonic() > deadline:
                pytest.fail("no replica replaced the killed one within 180 s")
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=150)
    assert len(answers) == len(sent), "a request got no answer"
    codes = Counter(code for code, *_ in answers)
    refusals = Counter(body["error"]["message"] for code, _, _, body in answers if code == 503 and body)
    lost = refusals[REPLICA_LOST]
    no_body = sum(n for message, n in refusals.items() if message.startswith("no request body arrived"))
    with capsys.disabled():
        print(f"\n[replicas] {len(answers)} requests while one of {REPLICAS} replicas was SIGKILLed and replaced: "
              f"{codes[200]} answered 200, {lost} answered 503 by the proxy (in flight on the killed replica), "
              f"{no_body} answered 503 for a body lost with it, {codes[503] - lost - no_body} answered 503 by a "
              f"full replica, {len(answers) - codes[200] - codes[503]} other")
    assert set(codes) <= {200, 503}, codes
    for code, retry_after, _, body in answers:
        if code == 503:  # replica lost, body lost or replica full: the app's JSON error, with when to come back
            assert retry_after is not None and int(retry_after) >= 1
            assert body is not None and body["error"]["code"] == 503 and body["error"]["message"]
    assert lost + no_body <= CLIENTS, "more requests lost than the killed replica can have held"
    wait_for_replicas(REPLICAS)
    assert classify(base_url).status_code == 200
