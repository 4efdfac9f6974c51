"""`python -m agents.launcher`: start the whole bus and keep it up.

Starts the ModelManagerAgent and one service agent per task that has models configured,
each in its own process; waits until every agent's `health` says ready; prints the
endpoints. A process that dies is restarted (with a short backoff). On Ctrl-C or SIGTERM
every process gets SIGTERM: running batches finish, queued work gets a shutting_down error
reply, and whatever is still alive after the grace period is killed.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from agents.model_client import ClientConfig, ModelClient
from model_manager.config import Config, ConfigError, load_config
from model_manager.runtime import setup_logging, stop_on_signals

log = logging.getLogger("voicebus.launcher")

READY_TIMEOUT_S = 600.0
SHUTDOWN_GRACE_S = 40.0
RESTART_BACKOFF_S = (1.0, 2.0, 5.0)


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=os.environ.copy())
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()


def plan_children(config: Config) -> list[Child]:
    python = sys.executable
    children = [Child("model-manager", [python, "-m", "model_manager"])]
    for task in ("stt", "tts"):
        if config.models(task):
            children.append(Child(f"{task}-agent", [python, "-m", "agents.service_agent", task]))
    return children


def agent_addresses(config: Config) -> dict[str, str]:
    host = "127.0.0.1" if config.endpoints.host in ("0.0.0.0", "*") else config.endpoints.host
    addresses = {}
    if config.stt_models:
        addresses["stt"] = f"tcp://{host}:{config.endpoints.stt_port}"
    if config.tts_models:
        addresses["tts"] = f"tcp://{host}:{config.endpoints.tts_port}"
    return addresses


def wait_until_ready(
    addresses: dict[str, str],
    children: list[Child],
    stop: threading.Event,
    timeout_s: float = READY_TIMEOUT_S,
) -> bool:
    client = ModelClient(ClientConfig(connect_timeout_s=1.0))
    deadline = time.monotonic() + timeout_s
    waiting = dict(addresses)
    while waiting and time.monotonic() < deadline and not stop.is_set():
        for task, address in list(waiting.items()):
            reply = client.request(address, {"action": "health"}, timeout_s=1.0)
            if reply.get("ready"):
                del waiting[task]
            elif reply.get("model_manager") == "error":
                log.error("model manager failed to load models: %s", reply.get("model_manager_error"))
                return False
        for child in children:
            if child.exited() is not None:
                log.error("%s exited with code %s during start-up", child.name, child.exited())
                return False
        if waiting:
            time.sleep(0.5)
    return not waiting


def supervise(children: list[Child], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for child in children:
            code = child.exited()
            if code is None:
                continue
            delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
            log.error("%s exited with code %s; restarting in %.0f s", child.name, code, delay)
            if stop.wait(delay):
                return
            child.restarts += 1
            child.start()


def shutdown(children: list[Child]) -> None:
    for child in children:
        if child.exited() is None:
            child.process.terminate()  # type: ignore[union-attr]
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", child.name, SHUTDOWN_GRACE_S)
            child.process.kill()
            child.process.wait()
    log.info("voicebus stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start the voicebus model manager and service agents.")
    parser.parse_args(argv)
    setup_logging("launcher")
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"voicebus: invalid configuration: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    children = plan_children(config)
    for child in children:
        child.start()
    try:
        addresses = agent_addresses(config)
        if not wait_until_ready(addresses, children, stop):
            if stop.is_set():
                return 0
            log.error("voicebus did not become ready; shutting down")
            return 1
        print("voicebus is ready:", flush=True)
        for task, address in addresses.items():
            print(f"  {task.upper()}: {address}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        supervise(children, stop)
        return 0
    finally:
        shutdown(children)


if __name__ == "__main__":
    sys.exit(main())
