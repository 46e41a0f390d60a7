"""Two model replicas (fractional CPUs) on the local Ray: requests spread over both, and every request is
answered while one is killed and replaced.

A replica is the HTTP ingress itself (one hop), so a request the killed replica was working on is answered by
Serve's proxy, which does not retry a request a replica accepted: our proxy middleware (serve.proxy_errors,
installed by serve.local_run) makes that the app's JSON 503 with Retry-After, saying the replica was lost. A
request whose replica died after reading its body but before Serve's router heard it accept is re-sent to a
live replica without its body: that replica answers 503 with Retry-After once no body has come for
serve.requests.BODY_START_TIMEOUT_S. Every other request is answered 200 by a live replica, or 503 with
Retry-After when they are full. No 500, no hang, no other shape. The test prints the counts.

One app for the module, shut down at the end so later modules get the CPUs back.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter

import pytest
import requests
from PIL import Image

APP = "serve-replicas"
REPLICAS = 2
CLIENTS = 6


@pytest.fixture(scope="module")
def base_url(ray_local, tiny_checkpoint):
    from serve.app import AppArgs, build_app
    from serve.local_run import run_local, stop_local

    args = AppArgs(checkpoint=str(tiny_checkpoint), min_replicas=REPLICAS, model_num_cpus=0.5, ingress_num_cpus=0.25,
                   max_batch_size=4, max_ongoing_requests=4, max_queued_requests=4, warmup=False)
    url = run_local(build_app(args), name=APP)
    wait_for_running_replicas(REPLICAS)
    yield url
    stop_local()


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications[APP].deployments["Model"]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for_running_replicas(count: int, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while running_replicas() < count:
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} running replicas after {timeout_s:.0f} s")
        time.sleep(0.5)


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
    import ray

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
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
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
        print(f"\n[replicas] {len(answers)} requests while one of {REPLICAS} replicas was killed and replaced: "
              f"{codes[200]} answered 200, {lost} answered 503 by the proxy (in flight on the killed replica), "
              f"{no_body} answered 503 for a body lost with it, {codes[503] - lost - no_body} answered 503 by a "
              f"full replica, {len(answers) - codes[200] - codes[503]} other")
    assert set(codes) <= {200, 503}, codes
    for code, retry_after, _, body in answers:
        if code == 503:  # replica lost, body lost or replica full: the app's JSON error, with when to come back
            assert retry_after is not None and int(retry_after) >= 1
            assert body is not None and body["error"]["code"] == 503 and body["error"]["message"]
    assert lost + no_body <= CLIENTS, "more requests lost than the killed replica can have held"
    wait_for_running_replicas(REPLICAS)
    assert classify(base_url).status_code == 200
