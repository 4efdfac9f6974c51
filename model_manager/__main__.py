"""`python -m model_manager`: run the ModelManagerAgent until SIGINT/SIGTERM."""

from __future__ import annotations

import sys

from model_manager.agent import ModelManagerAgent
from model_manager.config import ConfigError, load_config
from model_manager.runtime import setup_logging, stop_on_signals


def main() -> int:
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"voicebus: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging("model-manager", config.logging.level)
    ModelManagerAgent(config).serve(stop_on_signals())
    return 0


if __name__ == "__main__":
    sys.exit(main())
