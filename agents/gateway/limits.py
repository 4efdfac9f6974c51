"""The upload limit, enforced before the body is read: a request whose Content-Length is over
`max_bytes` gets 413 at once, without a byte of its body read; one without a length (chunked)
is counted as it arrives and cut off with 413 as soon as it passes the limit. So a 1 GB upload
costs the gateway nothing more than its headers, or the limit's worth of bytes."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agents.gateway.errors import REQUEST_TOO_LARGE


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send, int(length) if length.isdigit() else None)
            return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Look like a client that left: the app stops reading, and its reply is
                    # replaced by the 413 below.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send, None)

    async def _refuse(self, send: Send, length: int | None) -> None:
        size = f"{length} bytes" if length is not None else "the request body"
        body: dict[str, Any] = {"error": {
            "message": f"{size} is over the gateway's limit of {self.max_bytes} bytes",
            "type": "invalid_request_error", "param": None, "code": REQUEST_TOO_LARGE}}
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
