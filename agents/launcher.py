"""`python -m agents.launcher`: start the whole bus and keep it up.

Starts the ModelManagerAgent and one service agent per task that has models configured,
each in its own process; waits until every agent's `health` says ready; prints the
endpoints. Serves the live monitoring page (agents/monitor.py) on 127.0.0.1 from the
start, so loading can be watched too. A process that dies is restarted (with a short
backoff). On Ctrl-C or SIGTERM every process gets SIGTERM: running batches finish, queued
work gets a shutting_down error reply, and whatever is still alive after the grace period
is killed.
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

import zmq

from agents import security
from agents.model_client import ClientConfig, ModelClient
from agents.monitor import MonitorServer, start_monitor
from model_manager.config import Config, load_config
from model_manager.runtime import exit_on_config_error, setup_logging, stop_on_signals

log = logging.getLogger("voicebus.launcher")

READY_TIMEOUT_S = 600.0
SHUTDOWN_GRACE_S = 40.0
RESTART_BACKOFF_S = (1.0, 2.0, 5.0)
# A child that ran this long before dying starts the backoff over: it was not crash-looping.
STABLE_RUN_S = 60.0


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


def local_host(config: Config) -> str:
    """Where this machine reaches what binds `endpoints.host` (a wildcard is not an address)."""
    return "127.0.0.1" if config.endpoints.host in ("0.0.0.0", "*") else config.endpoints.host


def agent_addresses(config: Config) -> dict[str, str]:
    host = local_host(config)
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
    client: ModelClient | None = None,
) -> bool:
    # No retries: this loop is the retry, and must notice a child that died meanwhile.
    client = client or ModelClient(ClientConfig(connect_timeout_s=1.0, retries=0))
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
            if time.monotonic() - child.started_at >= STABLE_RUN_S:
                child.restarts = 0
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


def open_monitor(config: Config, addresses: dict[str, str], client: ModelClient) -> MonitorServer | None:
    """The monitoring page, or None when monitor_port is 0 or taken: the page is for
    watching the bus, so a port clash must not stop the bus."""
    if not config.endpoints.monitor_port:
        return None
    try:
        return start_monitor(addresses, config.endpoints.monitor_port, client)
    except OSError as exc:
        log.error(
            "monitor page disabled: cannot listen on 127.0.0.1:%d: %s", config.endpoints.monitor_port, exc
        )
        return None


def probe_client(config: Config) -> ModelClient:
    """The launcher's health-probe client. With CURVE on it holds an ephemeral key pair whose
    public half the children (started after this call) let in; raises ConfigError when the
    server key cannot be read."""
    settings = ClientConfig(connect_timeout_s=1.0, retries=0)
    if config.security.curve_enabled:
        server_public, _ = security.load_server_keys(config.security)
        public, secret = zmq.curve_keypair()
        os.environ[security.SUPERVISOR_KEY_ENV] = public.decode("ascii")
        settings.server_public_key = server_public.decode("ascii")
        settings.client_keypair = (public, secret)
    return ModelClient(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start the voicebus model manager and service agents.")
    parser.parse_args(argv)
    return exit_on_config_error(_launch)


def _launch() -> int:
    config = load_config()
    setup_logging("launcher", config.logging.level)
    client = probe_client(config)
    stop = stop_on_signals()
    children = plan_children(config)
    for child in children:
        child.start()
    addresses = agent_addresses(config)
    monitor = open_monitor(config, addresses, client)
    try:
        if not wait_until_ready(addresses, children, stop, client=client):
            if stop.is_set():
                return 0
            log.error("voicebus did not become ready; shutting down")
            return 1
        print("voicebus is ready:", flush=True)
        for task, address in addresses.items():
            print(f"  {task.upper()}: {address}", flush=True)
        if config.endpoints.metrics_port:
            print(
                f"  Metrics: http://{local_host(config)}:{config.endpoints.metrics_port}/metrics", flush=True
            )
        if monitor is not None:
            print(f"  Monitor: {monitor.url}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        supervise(children, stop)
        return 0
    finally:
        if monitor is not None:
            monitor.close()
        shutdown(children)


if __name__ == "__main__":
    sys.exit(main())
