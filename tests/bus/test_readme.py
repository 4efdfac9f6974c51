"""The examples in README.md and the docs pages run as written, against the session's real bus.

Every fenced ```python block, and every ```bash block made only of curl calls, of README.md
and docs/*.md (less protocol.md and deploy.md, whose examples need a bus set up otherwise:
CurveZMQ keys, other hosts) runs in a fresh directory of its own. The examples name the
default ports; the session bus runs on free ones, so that a bus someone already runs on the
defaults can neither break this test nor be used by it: each default port in an example's
text is replaced by the session bus's, and the Python client's default addresses are set
the same way (VOICEBUS_STT_ADDRESS, VOICEBUS_TTS_ADDRESS). One bus for all of it: the
session's `bus` fixture, shared with the rest of the suite. The examples run at once, as
clients of one bus do, which also keeps the test short.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

#: Pages whose examples need a bus other than the session's (keys, several hosts).
NOT_RUN_HERE = {"protocol.md", "deploy.md"}
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in NOT_RUN_HERE)]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: curl fails on an HTTP error and says why; the example's own flags still apply.
CURL_STRICT = 'curl() { command curl --fail-with-body --silent --show-error "$@"; }\n'
EXAMPLE_TIMEOUT_S = 240


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    language: str  # "python" or "bash"
    code: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def only_curl(code: str) -> bool:
    """A bash block whose every command (continuation lines joined) is a curl call."""
    commands = [c.strip() for c in code.replace("\\\n", " ").splitlines() if c.strip()]
    return bool(commands) and all(c.startswith("curl ") for c in commands)


def examples() -> list[Example]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            language, code = match.group(1), match.group(2)
            if language == "python" or (language == "bash" and only_curl(code)):
                line = text.count("\n", 0, match.start()) + 1
                found.append(Example(str(page.relative_to(ROOT)), line, language, code))
    return found


EXAMPLES = examples()


def on_bus(code: str, ports: dict[int, int]) -> str:
    for default, port in ports.items():
        code = re.sub(rf"\b{default}\b", str(port), code)
    return code


def test_the_pages_hold_the_examples_they_promise():
    """The README shows a zmq client, the Python client, the openai SDK and a live stream;
    the docs pages add curl, Realtime, the Python client's live stream and Wyoming."""
    by_page: dict[str, list[Example]] = {}
    for example in EXAMPLES:
        by_page.setdefault(example.page, []).append(example)
    assert len(by_page["README.md"]) >= 4, by_page.get("README.md")
    code = "\n".join(e.code for e in EXAMPLES)
    for needle in ('"stream_open"', "model_client.generate", "from openai import OpenAI",
                   "client.realtime.connect", "AsyncTcpClient", "curl http://127.0.0.1:8880/v1/audio/"):
        assert needle in code, needle


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def runs(bus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every example, all at once (as many clients of one bus), each in a directory of its own."""
    ports = {5800: int(bus.stt_address.rsplit(":", 1)[1]), 5801: int(bus.tts_address.rsplit(":", 1)[1]),
             8880: int(bus.http_url.rsplit(":", 1)[1]), 10300: bus.wyoming_port}
    env = {**os.environ, "PYTHONPATH": str(ROOT),  # as from the repository root
           "VOICEBUS_STT_ADDRESS": bus.stt_address, "VOICEBUS_TTS_ADDRESS": bus.tts_address}
    started = {}
    for example in EXAMPLES:
        code = on_bus(example.code, ports)
        if example.language == "python":
            command = [sys.executable, "-c", code]
        else:
            command = ["bash", "-euo", "pipefail", "-c", CURL_STRICT + code]
        started[example.name] = subprocess.Popen(
            command, cwd=tmp_path_factory.mktemp("example"), env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + EXAMPLE_TIMEOUT_S
    finished = {}
    for name, process in started.items():
        try:
            stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            stderr += f"\n(killed after {EXAMPLE_TIMEOUT_S} s)"
        finished[name] = Run(process.returncode, stdout, stderr)
    return finished


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_example_runs_as_written(example: Example, runs: dict[str, Run]):
    done = runs[example.name]
    assert done.returncode == 0, f"{example.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert done.stdout.strip(), f"{example.name} printed nothing"
