"""`python -m agents.gateway`: serve the HTTP gateway on endpoints.host:endpoints.http_port.

It talks to the STT and TTS agents of the same configuration (on `endpoints.host`), with the
CURVE keys of VOICEBUS_SERVER_KEY / VOICEBUS_CLIENT_KEY when the bus has CURVE on. The
launcher starts it with the rest of the bus; it can also run alone against a running bus.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys

import uvicorn

from agents import security
from agents.gateway.app import build_app
from agents.gateway.auth import load_api_keys
from agents.gateway.bus import BusClient
from agents.launcher import agent_addresses
from agents.model_client import ClientConfig, CurveKeys, curve_keys
from model_manager.config import Config, ConfigError, load_config
from model_manager.runtime import exit_on_config_error, setup_logging

log = logging.getLogger("voicebus.gateway")


def _serve() -> int:
    config = load_config()
    setup_logging("gateway", config.logging.level)
    if not config.endpoints.http_port:
        log.error("endpoints.http_port is 0: the gateway is off")
        return 2
    keys = load_api_keys(config.gateway)
    if not keys and not _loopback(config.endpoints.host):
        log.warning("the gateway listens on %s without API keys: anyone who reaches it may use it "
                    "(set gateway.api_keys_file or %s)", config.endpoints.host, config.gateway.api_keys_env)
    bus = BusClient(agent_addresses(config), config.limits.request_timeout_ms / 1000, _curve(config))
    app = build_app(config, bus, keys)
    uvicorn.run(app, host=config.endpoints.host, port=config.endpoints.http_port, loop="asyncio",
                log_config=None, access_log=False, timeout_graceful_shutdown=10)
    return 0


def _curve(config: Config) -> CurveKeys | None:
    """The gateway's CURVE keys on a bus with CURVE on: VOICEBUS_SERVER_KEY and
    VOICEBUS_CLIENT_KEY when given, else the key pair of the launcher that started it (which
    the agents admit)."""
    if not config.security.curve_enabled:
        return None
    try:
        curve = curve_keys(ClientConfig())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"security.curve_enabled: the gateway's client keys: {exc}") from exc
    public = os.environ.get(security.SUPERVISOR_KEY_ENV)
    secret = os.environ.get(security.SUPERVISOR_SECRET_ENV)
    if curve is None and public and secret:
        server_public, _ = security.load_server_keys(config.security)
        curve = (server_public, public.encode("ascii"), secret.encode("ascii"))
    if curve is None:
        raise ConfigError("security.curve_enabled: the gateway needs VOICEBUS_SERVER_KEY and "
                          "VOICEBUS_CLIENT_KEY (a client key pair the agents admit)")
    return curve


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main() -> int:
    return exit_on_config_error(_serve)


if __name__ == "__main__":
    sys.exit(main())
