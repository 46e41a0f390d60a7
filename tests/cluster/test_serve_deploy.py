"""The deployment story on a running cluster: `ray start --head` (its own Ray, its own temp folder, the dashboard on),
then from a copy of the repository whose demo page was edited after the cluster started, as the README says:

    ray job submit --working-dir . -- python -m serve.deploy serve/config.yaml checkpoint=...

The replicas run the job's working directory (the edited page is what `/` answers, not the installed code's), the
config's own settings hold (its port, its proxy middleware variable), and a second deploy after another edit
reaches the replicas too. The cluster is stopped with Ctrl+C on `ray start --block`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from serve.local_run import free_port, wait_ready

from ctrl_c import press_ctrl_c, sigint_as_from_a_terminal

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CPU_ARGS = ["model_num_gpus=0", "model_num_cpus=0.5", "ingress_num_cpus=0.25", "min_replicas=1", "max_replicas=1",
            "warmup=false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head started as on a cluster node, from the project's environment (its bin first on PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "UNIP2_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_TMPDIR=tempfile.mkdtemp(prefix="ray", dir="/tmp"),
               RAY_USAGE_STATS_ENABLED="0",
               # Token authentication is Ray's to test: its token files are per machine, this cluster is per test.
               RAY_AUTH_MODE="disabled")
    gcs, dashboard = free_port(), free_port()
    # Ports Ray would otherwise take at fixed defaults (the dashboard agent's 52365, Ray Client's 10001), which
    # another Ray on this machine (the test session's own) may already hold.
    fixed = [f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"]
    log = tmp_path_factory.mktemp("head") / "ray_start.log"
    with log.open("w") as output:
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
                                 "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                                 f"--dashboard-port={dashboard}", *fixed, "--num-cpus=2", "--disable-usage-stats"],
                                cwd=tmp_path_factory.mktemp("elsewhere"), env=env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=sigint_as_from_a_terminal)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(address + "/api/version", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield {"env": {**env, "RAY_ADDRESS": address}, "address": address}
    finally:
        press_ctrl_c(head, timeout_s=60)  # `ray start --block` stops every process it started


@pytest.fixture(scope="module")
def code(tmp_path_factory) -> Path:
    """The repository's tracked files, as a user's checkout, with the Serve port moved off 8000."""
    copy = tmp_path_factory.mktemp("checkout")
    for name in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.splitlines():
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    config = yaml.safe_load((copy / "serve" / "config.yaml").read_text())
    config["http_options"]["port"] = free_port()
    (copy / "serve" / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


def deploy(cluster, code: Path, checkpoint: Path, marker: str) -> subprocess.CompletedProcess:
    page = code / "serve" / "static" / "index.html"
    page.write_text(page.read_text().replace("</body>", f"<!-- {marker} --></body>"))
    return subprocess.run(["ray", "job", "submit", "--working-dir", ".", "--", "python", "-m", "serve.deploy",
                           "serve/config.yaml", f"checkpoint={checkpoint}", *CPU_ARGS],
                          cwd=code, env=cluster["env"], capture_output=True, text=True, timeout=300)


def wait_for_page(url: str, marker: str, timeout_s: float = 180.0) -> str:
    deadline = time.monotonic() + timeout_s
    page = ""
    while time.monotonic() < deadline:
        try:
            page = requests.get(url + "/", timeout=10).text
            if marker in page:
                return page
        except (requests.ConnectionError, requests.Timeout):  # the app restarting on a loaded machine: ask again
            pass
        time.sleep(1.0)
    pytest.fail(f"{marker!r} not served within {timeout_s:.0f} s; last page ends {page[-300:]!r}")


def test_a_job_deploys_the_config_with_its_working_directory_and_a_redeploy_brings_new_code(
        cluster, code, tiny_checkpoint):
    port = yaml.safe_load((code / "serve" / "config.yaml").read_text())["http_options"]["port"]
    url = f"http://127.0.0.1:{port}"
    first = deploy(cluster, code, tiny_checkpoint, "edited after the cluster started")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[serve] deployed unip2 with the code of gcs://" in first.stdout, first.stdout[-2000:]
    ready = wait_ready(url, 300)
    assert ready["status"] == "ready"
    wait_for_page(url, "edited after the cluster started")
    answer = requests.post(url + "/v1/classify", files={"image": (ROOT / "docs/default_run/predictions.png").read_bytes()},
                           data={"top_k": "2"}, timeout=120)
    assert answer.status_code == 200 and len(answer.json()["top_names"]) == 2, answer.text

    # The running app's config names the job's package, and the config's own runtime_env is kept beside it.
    status = subprocess.run(["serve", "config", "--address", cluster["address"]], env=cluster["env"],
                            capture_output=True, text=True, timeout=60)
    (app,) = list(yaml.safe_load_all(status.stdout))
    assert app["runtime_env"]["working_dir"].startswith("gcs://") and app["runtime_env"]["env_vars"] == {
        "HF_HUB_OFFLINE": "1"}, json.dumps(app)

    second = deploy(cluster, code, tiny_checkpoint, "edited again")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    wait_for_page(url, "edited again")


def test_a_wrong_argument_is_refused_before_connecting_to_the_cluster():
    from serve import deploy

    with pytest.raises(SystemExit, match="max_batch_size"):
        deploy.main([str(ROOT / "serve" / "config.yaml"), "max_batch_size=0"])
    with pytest.raises(SystemExit, match="not key=value"):
        deploy.main([str(ROOT / "serve" / "config.yaml"), "max_batch_size"])
