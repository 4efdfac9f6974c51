"""Optional API keys: `Authorization: Bearer KEY`, as OpenAI clients send it. The keys come
from `gateway.api_keys_file` (one per line, # comments) and the environment variable named by
`gateway.api_keys_env` (comma-separated); with none configured every request is let in."""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from agents.gateway.errors import INVALID_API_KEY
from model_manager.config import ConfigError, GatewayConfig


def load_api_keys(settings: GatewayConfig, environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Every configured key; ConfigError when the keys file cannot be read."""
    environ = os.environ if environ is None else environ
    keys: set[str] = set()
    if settings.api_keys_file:
        path = Path(settings.api_keys_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"gateway.api_keys_file: cannot read {path}: {exc}") from exc
        keys.update(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if settings.api_keys_env:
        keys.update(key.strip() for key in environ.get(settings.api_keys_env, "").split(",") if key.strip())
    return frozenset(keys)


def authorized(header: str | None, keys: frozenset[str]) -> bool:
    """Whether an Authorization header value carries one of `keys` (always, with no keys)."""
    if not keys:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    # Compare against every key in constant time, so the time taken says nothing about them.
    token_bytes = token.strip().encode()
    return any([hmac.compare_digest(token_bytes, key.encode()) for key in keys])


#: Paths served without a key: the launcher's health probe and Prometheus.
OPEN_PATHS = frozenset({"/health", "/metrics"})


class ApiKeyCheck:
    """ASGI middleware: 401 for a request without a valid key, before its body is read; a
    WebSocket without one is refused at the handshake (403)."""

    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if authorized(header, self.keys):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
            return
        payload = json.dumps({"error": {"message": "Incorrect or missing API key (Authorization: Bearer KEY)",
                                        "type": "authentication_error", "param": None,
                                        "code": INVALID_API_KEY}}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": payload})
