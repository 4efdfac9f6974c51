"""CurveZMQ on the client-facing agent sockets: encryption, and a ZAP allow-list of client keys.

With `security.curve_enabled` the agents' ROUTER sockets are CURVE servers holding the key
pair in `security.server_secret_key_file`, and a ZAP handler (pyzmq's ThreadAuthenticator)
lets in only clients whose public key is one of the `*.key` files in
`security.authorized_clients_dir`. Anyone else, and any plaintext client, fails the
handshake and never reaches the agent: from their side the bus does not answer.

The launcher's own health probes use an ephemeral key pair whose public half it hands to
its children in SUPERVISOR_KEY_ENV, so operators never have to list it.

Keys are made by ``python -m agents.keys DIR`` (see agents/keys.py).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from model_manager.config import ConfigError, Security

log = logging.getLogger(__name__)

#: Public key (Z85) of the launcher's health probes, set by the launcher for its children.
SUPERVISOR_KEY_ENV = "VOICEBUS_SUPERVISOR_KEY"
#: The secret half of that key pair, for the HTTP gateway the launcher starts (a client of
#: the agents like the launcher's probes).
SUPERVISOR_SECRET_ENV = "VOICEBUS_SUPERVISOR_SECRET"
RELOAD_INTERVAL_S = 1.0
MAX_REFUSED_LOGGED = 1000


class AllowList:
    """A ZAP credentials provider: the public keys in a directory, plus extra keys.

    The directory is read again on a handshake when the last read is over a second old (so
    that a flood of handshakes cannot keep the disk busy): a client key added to it is let in,
    and one removed is refused, within a second, without a restart."""

    def __init__(self, directory: str | Path, extra: set[bytes] | None = None) -> None:
        self.directory = Path(directory).expanduser()
        self.extra = set(extra or ())
        self.keys = self._load()
        self.next_reload = time.monotonic() + RELOAD_INTERVAL_S
        self.refused: set[bytes] = set()

    def _load(self) -> set[bytes]:
        return set(zmq.auth.load_certificates(self.directory))

    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator with the client's Z85 public key: is it allowed?"""
        if time.monotonic() >= self.next_reload:
            self.next_reload = time.monotonic() + RELOAD_INTERVAL_S
            try:
                self.keys = self._load()
            except (OSError, ValueError) as exc:  # a missing directory, a malformed key file
                log.error("cannot read the authorized clients in %s: %s", self.directory, exc)
        if key in self.keys or key in self.extra:
            return True
        # A refused client reconnects every 100 ms: say so once per key, not each time.
        if key not in self.refused and len(self.refused) < MAX_REFUSED_LOGGED:
            self.refused.add(key)
            log.warning("refused a client with an unknown CURVE key %s", key.decode("ascii", "replace"))
        return False


def load_server_keys(settings: Security) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from the server's secret key file, or ConfigError saying why not."""
    path = Path(settings.server_secret_key_file).expanduser()
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"security.server_secret_key_file: cannot read a key pair from {path}: {exc}"
        ) from None
    if not secret:
        raise ConfigError(f"security.server_secret_key_file: {path} holds no secret key (use *.key_secret)")
    return public, secret


def secure_server_socket(
    sock: zmq.Socket, context: zmq.Context, settings: Security
) -> ThreadAuthenticator | None:
    """Make `sock` (not yet bound) a CURVE server behind the allow-list, when enabled.

    Returns the running authenticator, to be stopped with the socket; None when CURVE is
    off. Raises ConfigError for a missing key file or allow-list directory."""
    if not settings.curve_enabled:
        return None
    supervisor = os.environ.get(SUPERVISOR_KEY_ENV)
    return _curve_server(sock, context, settings, "authorized_clients_dir",
                         {supervisor.encode("ascii")} if supervisor else None)


def _curve_server(sock: zmq.Socket, context: zmq.Context, settings: Security, allow_key: str,
                  extra: set[bytes] | None = None) -> ThreadAuthenticator:
    """Make `sock` a CURVE server with the agents' key pair, behind the allow-list in the
    directory that `settings.<allow_key>` names (plus `extra` keys); the running handler."""
    public, secret = load_server_keys(settings)
    directory = Path(getattr(settings, allow_key)).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"security.{allow_key}: {directory} is not a directory")
    try:
        allow = AllowList(directory, extra)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"security.{allow_key}: cannot read the keys in {directory}: {exc}") from None
    # The handler must be up before the socket binds, or the first handshakes skip ZAP.
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback("*", credentials_provider=allow)
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    log.info("CURVE on: %d authorized keys in %s", len(allow.keys), directory)
    return authenticator


def secure_client_socket(
    sock: zmq.Socket, server_public: bytes, client_public: bytes, client_secret: bytes
) -> None:
    """Make `sock` (not yet connected) a CURVE client of the server with `server_public`."""
    sock.curve_serverkey = server_public
    sock.curve_publickey = client_public
    sock.curve_secretkey = client_secret


def secure_backend_socket(
    sock: zmq.Socket, context: zmq.Context, settings: Security
) -> ThreadAuthenticator | None:
    """Make an agent's backend ROUTER (not yet bound) a CURVE server that admits only the
    model managers whose public keys are in `authorized_model_managers_dir`; None when
    `backend_curve_enabled` is off. A manager with another key gets no work: its handshake
    fails and it never reaches the agent."""
    if not settings.backend_curve_enabled:
        return None
    return _curve_server(sock, context, settings, "authorized_model_managers_dir")


def secure_model_manager_socket(sock: zmq.Socket, settings: Security) -> None:
    """Make a model manager's DEALER (not yet connected) a CURVE client of the agents, when
    `backend_curve_enabled`; ConfigError when its keys cannot be read."""
    if not settings.backend_curve_enabled:
        return
    try:
        server_public, _ = zmq.auth.load_certificate(Path(settings.server_public_key_file).expanduser())
        public, secret = zmq.auth.load_certificate(Path(settings.model_manager_secret_key_file).expanduser())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"security.server_public_key_file / model_manager_secret_key_file: {exc}") from None
    if not secret:
        raise ConfigError("security.model_manager_secret_key_file: holds no secret key (use *.key_secret)")
    secure_client_socket(sock, server_public, public, secret)
