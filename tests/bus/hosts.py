"""Simulated hosts for the tests of voicebus across machines: Linux network namespaces
joined by veth pairs to a bridge in the agents' namespace, with addresses that exist only
inside them (10.77.0.0/24). Real processes run in each with `ip netns exec`.

    agents namespace: lo (clients and agents), br0 10.77.0.1 (the agents' backend)
    manager i:        veth 10.77.0.(10+i) ── bridge ── agents

`cut(i)` takes host i's link down (a cable pulled); `mend(i)` brings it back. Everything is
removed in `close()`, which the fixtures call in a `finally`. Needs root: `skip_reason()`
says why not, for pytest.skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.77.0"
AGENTS_IP = f"{SUBNET}.1"


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces); CI runs as root"
    if shutil.which("ip") is None:
        return "simulated hosts need iproute2's `ip`"
    probe = f"vbprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Hosts:
    tmp: Path
    managers: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    processes: list[Process] = field(default_factory=list)

    @property
    def agents_ns(self) -> str:
        return f"vb{self.tag}a"

    def manager_ns(self, i: int) -> str:
        return f"vb{self.tag}m{i}"

    def manager_ip(self, i: int) -> str:
        return f"{SUBNET}.{10 + i}"

    def open(self) -> Hosts:
        a = self.agents_ns
        _ip("netns", "add", a)
        _ip("-n", a, "link", "set", "lo", "up")
        _ip("-n", a, "link", "add", "br0", "type", "bridge")
        _ip("-n", a, "addr", "add", f"{AGENTS_IP}/24", "dev", "br0")
        _ip("-n", a, "link", "set", "br0", "up")
        for i in range(self.managers):
            m, host_end, bridge_end = self.manager_ns(i), f"vb{self.tag}h{i}", f"vb{self.tag}p{i}"
            _ip("netns", "add", m)
            _ip("-n", m, "link", "set", "lo", "up")
            _ip("link", "add", host_end, "netns", m, "type", "veth", "peer", "name", bridge_end, "netns", a)
            _ip("-n", m, "addr", "add", f"{self.manager_ip(i)}/24", "dev", host_end)
            _ip("-n", m, "link", "set", host_end, "up")
            _ip("-n", a, "link", "set", bridge_end, "master", "br0")
            _ip("-n", a, "link", "set", bridge_end, "up")
        return self

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.popen.kill()
                process.popen.wait()
        for i in range(self.managers):
            subprocess.run(["ip", "netns", "del", self.manager_ns(i)], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.agents_ns], capture_output=True)

    def cut(self, i: int) -> None:
        _ip("-n", self.manager_ns(i), "link", "set", f"vb{self.tag}h{i}", "down")

    def mend(self, i: int) -> None:
        _ip("-n", self.manager_ns(i), "link", "set", f"vb{self.tag}h{i}", "up")

    # --- processes --------------------------------------------------------------------------

    def run(self, name: str, namespace: str, argv: list[str], env: dict[str, str]) -> Process:
        log_path = self.tmp / f"{name}.log"
        log = open(log_path, "a")  # noqa: SIM115 - kept open for the process's lifetime
        popen = subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, *argv], cwd=ROOT,
                                 env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def start_agents(self, env: dict[str, str] | None = None) -> Process:
        return self.run("agents", self.agents_ns, ["-m", "agents.launcher", "--role", "agents"], {
            "VOICEBUS__ENDPOINTS__BACKEND_HOST": AGENTS_IP,
            "VOICEBUS__ENDPOINTS__HTTP_PORT": "0",
            "VOICEBUS__ENDPOINTS__MONITOR_PORT": "0",
            "VOICEBUS__LIMITS__JOURNAL_DIR": str(self.tmp / "journal"),
            **(env or {}),
        })

    def start_manager(self, i: int, models: str = "whisper-tiny.en", env: dict[str, str] | None = None,
                      name: str | None = None) -> Process:
        return self.run(name or f"manager{i}", self.manager_ns(i),
                        ["-m", "model_manager", "--models", models,
                         "--agents", f"tcp://{AGENTS_IP}:5810,tcp://{AGENTS_IP}:5811"], {
                             "VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "false",
                             "VOICEBUS__MODELS__STT__0__OPTIONS__CPU_THREADS": "1",
                             **(env or {}),
                         })

    def client(self, script: dict, timeout_s: float = 240.0) -> list[dict]:
        """Run tests/bus/hosts_client.py in the agents' namespace with `script`; its JSON lines."""
        done = subprocess.run(["ip", "netns", "exec", self.agents_ns, sys.executable,
                               str(ROOT / "tests" / "bus" / "hosts_client.py"), json.dumps(script)],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def client_async(self, script: dict) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.agents_ns, sys.executable,
                                 str(ROOT / "tests" / "bus" / "hosts_client.py"), json.dumps(script)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self, process: Process, sig: int = signal.SIGTERM, timeout_s: float = 90.0) -> int:
        if process.alive():
            process.popen.send_signal(sig)
        return process.popen.wait(timeout_s)


def results_of(popen: subprocess.Popen, timeout_s: float = 240.0) -> list[dict]:
    out, err = popen.communicate(timeout=timeout_s)
    assert popen.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.2)
