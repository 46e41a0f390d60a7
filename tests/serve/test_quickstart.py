"""The README's quickstart, line by line, where its commands are short enough for a test: its two set-up commands
are the Makefile's (``make test`` is what CI runs; ``make train``'s default run takes ~14 minutes and its stages are
tested piece by piece), then its serve command is run as written in a shell with nothing exported (a tiny
checkpoint in place of ``runs/<run>/checkpoint``), its curl command asks it, and its Python lines give what the
route the README names returns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests
from json_close import close
from PIL import Image

from serve.local_run import wait_ready

from ctrl_c import press_ctrl_c, sigint_as_from_a_terminal

ROOT = Path(__file__).resolve().parents[2]
URL = "http://127.0.0.1:8000"
CHECKPOINT = "runs/<run>/checkpoint"


def quickstart_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README's Quickstart section."""
    text = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)


def commands(language: str) -> list[str]:
    """Shell lines of the quickstart's blocks in ``language``, comments dropped."""
    return [line.split(" #", 1)[0].strip() for lang, block in quickstart_blocks() if lang == language
            for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("quickstart")
    picture = Image.new("RGB", (96, 72), (200, 200, 200))
    picture.paste((200, 40, 40), (10, 10, 50, 40))
    picture.save(folder / "photo.jpg", quality=95)
    return folder / "photo.jpg"


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    """The quickstart's serve command in a user's shell (no RAY_ variables, a Ray temp folder of its own)."""
    serve_line = next(line for line in commands("bash") if " serve run " in f" {line.replace('/', ' ')} ")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "UNIP2_"))}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    log = tmp_path_factory.mktemp("quickstart_serve") / "serve_run.log"
    with log.open("w") as output:
        process = subprocess.Popen(["bash", "-c", "exec " + serve_line.replace(CHECKPOINT, str(tiny_checkpoint))],
                                   cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=sigint_as_from_a_terminal)
    try:
        wait_ready(URL, 300)
        yield serve_line
    finally:
        press_ctrl_c(process, timeout_s=90)


def test_the_set_up_commands_are_the_makefiles():
    lines = commands("bash")
    assert lines[:2] == ["make train", "make test"]
    targets = re.findall(r"^(\w+):", (ROOT / "Makefile").read_text(), flags=re.M)
    assert {"train", "test"} <= set(targets)


def test_the_curl_line_gets_an_answer_from_the_served_checkpoint(served, photo):
    curl = next(line for line in commands("bash") if line.startswith("curl "))
    answer = subprocess.run(["bash", "-c", curl], cwd=photo.parent, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    body = json.loads(answer.stdout)
    top_k = int(re.search(r"top_k=(\d+)", curl).group(1))
    assert body["task"] == "classification" and len(body["top_names"]) == top_k, body


def test_the_python_lines_return_what_the_route_returns(served, photo, tiny_checkpoint, monkeypatch):

    (code,) = [block for lang, block in quickstart_blocks() if lang == "python"]
    *statements, last = [line for line in code.replace(CHECKPOINT, str(tiny_checkpoint)).splitlines() if line]
    route = re.search(r"what (/v1/\w+) returns", last).group(1)
    call = last.split("#", 1)[0].strip()
    monkeypatch.chdir(photo.parent)
    scope: dict = {}
    exec("\n".join(statements), scope)
    predicted = eval(call, scope)
    fields = {key: str(value) for key, value in re.findall(r"(\w+)=(\d+)", call)}
    with photo.open("rb") as image:
        from_route = requests.post(URL + route, files={"image": image}, data=fields, timeout=120)
    assert from_route.status_code == 200, from_route.text
    assert close(predicted, from_route.json()), (predicted, from_route.json())
