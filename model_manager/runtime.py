"""Process plumbing shared by every voicebus process: logging set-up and signal handling."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from model_manager.config import ConfigError

#: The exit code of a process that found the configuration invalid: its supervisor stops
#: instead of restarting it, since a restart cannot fix the configuration.
CONFIG_ERROR_EXIT = 2


def setup_logging(component: str, level: str = "INFO") -> None:
    """Log to stderr at `level` (config `logging.level`); VOICEBUS_LOG_LEVEL, when set, wins."""
    # One line per event, with the component name, so interleaved process logs stay readable.
    logging.basicConfig(
        level=os.environ.get("VOICEBUS_LOG_LEVEL", level).upper(),
        format=f"%(asctime)s %(levelname)s {component} %(name)s: %(message)s",
    )


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so loops can finish their work and exit cleanly."""
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("voicebus").info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return stop


def exit_on_config_error(run: Callable[[], int]) -> int:
    """Run a process's main body. An invalid configuration, found at start-up or when a socket
    is set up (e.g. an unreadable CURVE key), stops it with exit code 2 and a message that
    names the key, instead of a traceback."""
    try:
        return run()
    except ConfigError as exc:
        print(f"voicebus: invalid configuration: {exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT
