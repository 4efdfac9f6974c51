"""`python -m agents.launcher`: start the whole bus and keep it up.

Starts the processes of `process_specs` for its `--role`: `all` (the default: one host),
`agents` (one service agent per task that has models configured, and the HTTP gateway) or
`model-manager` (`model_manager.replicas` ModelManagerAgents, which connect out to the
agents), each in its own process; waits until every agent's
`health` says ready; prints the endpoints. Serves the live monitoring page
(agents/monitor.py) on 127.0.0.1 from the start, so loading can be watched too.

Supervision never gives up on a crash: a process that dies, by a signal or an error, before
or after it was ready, is restarted with crash-loop backoff (`RESTART_BACKOFF_S`, the last
step repeating; a process that ran `STABLE_RUN_S` starts the backoff over). Only a
configuration error (exit code `CONFIG_ERROR_EXIT`, with a message naming the key) stops
the bus, since no restart can fix it. On Ctrl-C or SIGTERM every process gets SIGTERM:
running batches finish, queued work gets a shutting_down error reply, and whatever is still
alive after the grace period is killed. The children die with the launcher even when it is
killed with SIGKILL (they get SIGTERM from the kernel: PR_SET_PDEATHSIG), so no orphan keeps
holding the bus's ports.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import zmq

from agents import security
from agents.model_client import ClientConfig, ModelClient
from agents.monitor import MonitorServer, start_monitor
from model_manager.config import Config, load_config
from model_manager.runtime import CONFIG_ERROR_EXIT, exit_on_config_error, setup_logging, stop_on_signals

log = logging.getLogger("voicebus.launcher")

READY_TIMEOUT_S = 600.0
SHUTDOWN_GRACE_S = 40.0
#: Delay before each restart of a crashing process; the last step repeats for ever.
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# A child that ran this long before dying starts the backoff over: it was not crash-looping.
STABLE_RUN_S = 60.0
SUPERVISE_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the bus: a name for the logs and the module that `python -m` runs."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    #: Environment variables of its own, beside the launcher's.
    env: tuple[tuple[str, str], ...] = ()

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


ROLES = ("all", "agents", "model-manager")


def process_specs(config: Config, role: str = "all") -> list[ProcessSpec]:
    """Every process the bus runs for `role`, in start order. A new kind of process is one
    more row."""
    specs = []
    if role in ("all", "agents"):
        for task in ("stt", "tts"):
            if config.models(task):
                specs.append(ProcessSpec(f"{task}-agent", "agents.service_agent", (task,)))
        if config.endpoints.http_port:
            specs.append(ProcessSpec("gateway", "agents.gateway"))
    if role in ("all", "model-manager"):
        specs.extend(model_manager_specs(config))
    return specs


def model_manager_specs(config: Config) -> list[ProcessSpec]:
    """`model_manager.replicas` model managers; replica i gets GPU i when there are several,
    and its own metrics port (metrics_port + i)."""
    replicas = config.model_manager.replicas
    specs = []
    for i in range(replicas):
        env: list[tuple[str, str]] = []
        if replicas > 1:
            env.append(("CUDA_VISIBLE_DEVICES", str(i)))
            if config.endpoints.metrics_port:
                env.append(("VOICEBUS__ENDPOINTS__METRICS_PORT", str(config.endpoints.metrics_port + i)))
        specs.append(ProcessSpec("model-manager" if i == 0 else f"model-manager-{i}", "model_manager",
                                 env=tuple(env)))
    return specs


class ConfigurationFailed(Exception):
    """A child exited with CONFIG_ERROR_EXIT: restarting it cannot help."""


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)
    #: When a dead child is due to start again (monotonic); None while it runs.
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env={**os.environ, **self.env},
                                        preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, however it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's own shutdown still stops them
        pass


def plan_children(config: Config, role: str = "all") -> list[Child]:
    return [Child(spec.name, spec.argv(), dict(spec.env)) for spec in process_specs(config, role)]


def restart_delay(restarts: int) -> float:
    return RESTART_BACKOFF_S[min(restarts, len(RESTART_BACKOFF_S) - 1)]


def tend(children: list[Child], now: float) -> None:
    """One supervision step: schedule a restart for each child that died, start each one
    whose delay is over. Raises ConfigurationFailed for a child that exited with a
    configuration error."""
    for child in children:
        code = child.exited()
        if code is None:
            continue
        if code == CONFIG_ERROR_EXIT:
            raise ConfigurationFailed(f"{child.name} exited with a configuration error (see its message)")
        if child.restart_at is None:
            if now - child.started_at >= STABLE_RUN_S:
                child.restarts = 0
            child.restart_at = now + restart_delay(child.restarts)
            log.error("%s exited with code %s; restarting in %.0f s", child.name, code,
                      child.restart_at - now)
        elif now >= child.restart_at:
            child.restarts += 1
            child.start()


def without_taken_http_port(config: Config) -> Config:
    """`config`, with the HTTP gateway off (http_port 0) when its port is taken (by another
    server on 8880, say): as for the monitor page, a port clash must not stop the bus."""
    port = config.endpoints.http_port
    if not port:
        return config
    try:
        with socket.create_server((config.endpoints.host, port)):
            return config
    except OSError as exc:
        log.error("HTTP gateway disabled: cannot listen on %s:%d: %s", config.endpoints.host, port, exc)
        return config.model_copy(update={"endpoints": config.endpoints.model_copy(update={"http_port": 0})})


def gateway_url(config: Config) -> str | None:
    port = config.endpoints.http_port
    return f"http://{local_host(config)}:{port}" if port else None


def wait_for_gateway(url: str, children: list[Child], stop: threading.Event,
                     timeout_s: float = READY_TIMEOUT_S) -> bool:
    """True once the gateway's GET /health answers 200 (it does once it sees every agent
    ready); children that crash meanwhile are restarted, as in `wait_until_ready`."""
    deadline = time.monotonic() + timeout_s
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with direct.open(f"{url}/health", timeout=1.0) as response:
                if response.status == 200:
                    return True
        except OSError:  # not listening yet, or 503 while it waits for the agents
            pass
        try:
            tend(children, time.monotonic())
        except ConfigurationFailed as exc:
            log.error("%s", exc)
            return False
        time.sleep(SUPERVISE_INTERVAL_S)
    return False


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
    until: str = "ready",
) -> bool:
    """True once every agent says ready (`until`="live": once it answers, for agents whose
    model managers run elsewhere and come when they come). Children that crash meanwhile (a model manager
    killed while it loads, say) are restarted as they would be later; a configuration error
    or a model that fails to load (the model manager exits with CONFIG_ERROR_EXIT) ends the
    wait with False."""
    # No retries: this loop is the retry, and must notice a child that died meanwhile.
    client = client or ModelClient(ClientConfig(connect_timeout_s=1.0, retries=0))
    deadline = time.monotonic() + timeout_s
    waiting = dict(addresses)
    while waiting and time.monotonic() < deadline and not stop.is_set():
        for task, address in list(waiting.items()):
            reply = client.request(address, {"action": "health"}, timeout_s=1.0)
            if reply.get(until):
                del waiting[task]
        try:
            tend(children, time.monotonic())
        except ConfigurationFailed as exc:
            log.error("%s", exc)
            return False
        if waiting:
            time.sleep(SUPERVISE_INTERVAL_S)
    return not waiting


def supervise(children: list[Child], stop: threading.Event) -> int:
    """Keep every child running until `stop`; 0, or CONFIG_ERROR_EXIT when a restarted
    child finds the configuration invalid."""
    while not stop.wait(SUPERVISE_INTERVAL_S):
        try:
            tend(children, time.monotonic())
        except ConfigurationFailed as exc:
            log.error("%s; stopping", exc)
            return CONFIG_ERROR_EXIT
    return 0


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
        os.environ[security.SUPERVISOR_SECRET_ENV] = secret.decode("ascii")  # for the gateway
        settings.server_public_key = server_public.decode("ascii")
        settings.client_keypair = (public, secret)
    return ModelClient(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start voicebus: its agents, gateway and model managers.")
    parser.add_argument("--role", choices=ROLES, default="all",
                        help="all (one host, the default), agents (agents and gateway) or model-manager")
    args = parser.parse_args(argv)
    return exit_on_config_error(lambda: _launch(args.role))


def _launch(role: str) -> int:
    config = load_config()
    setup_logging("launcher", config.logging.level)
    config = without_taken_http_port(config)
    client = probe_client(config)
    stop = stop_on_signals()
    children = plan_children(config, role)
    for child in children:
        child.start()
    if role == "model-manager":  # they serve agents elsewhere: nothing here to wait for
        print(f"voicebus model managers started: {len(children)}", flush=True)
        try:
            return supervise(children, stop)
        finally:
            shutdown(children)
    addresses = agent_addresses(config)
    monitor = open_monitor(config, addresses, client)
    try:
        http = gateway_url(config)
        # Agents alone do not wait for model managers: those register whenever they start.
        until = "live" if role == "agents" else "ready"
        ready = wait_until_ready(addresses, children, stop, client=client, until=until)
        if ready and http is not None and role != "agents":
            ready = wait_for_gateway(http, children, stop)
        if not ready:
            if stop.is_set():
                return 0
            log.error("voicebus did not become ready; shutting down")
            configuration_failed = any(c.exited() == CONFIG_ERROR_EXIT for c in children)
            return CONFIG_ERROR_EXIT if configuration_failed else 1
        print("voicebus is ready:" if role != "agents" else
              "voicebus agents are up; model managers register as they start:", flush=True)
        for task, address in addresses.items():
            print(f"  {task.upper()}: {address}", flush=True)
        for task, port in (("STT agent", config.endpoints.stt_metrics_port if config.stt_models else 0),
                           ("TTS agent", config.endpoints.tts_metrics_port if config.tts_models else 0),
                           ("model manager", config.endpoints.metrics_port if role == "all" else 0)):
            if port:
                print(f"  Metrics ({task}): http://{local_host(config)}:{port}/metrics", flush=True)
        if monitor is not None:
            print(f"  Monitor: {monitor.url}", flush=True)
        if http is not None:
            print(f"  HTTP: {http} (OpenAI audio API under /v1, REST /tts)", flush=True)
            if config.endpoints.wyoming_port:
                print(f"  Wyoming: tcp://{local_host(config)}:{config.endpoints.wyoming_port} "
                      "(Home Assistant STT and TTS)", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        return supervise(children, stop)
    finally:
        if monitor is not None:
            monitor.close()
        shutdown(children)


if __name__ == "__main__":
    sys.exit(main())
