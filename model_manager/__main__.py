"""`python -m model_manager`: run the ModelManagerAgent until SIGINT/SIGTERM."""

from __future__ import annotations

import sys

from model_manager.agent import ModelManagerAgent
from model_manager.config import load_config
from model_manager.runtime import exit_on_config_error, setup_logging, stop_on_signals


def main() -> int:
    return exit_on_config_error(_serve)


def _serve() -> int:
    config = load_config()
    setup_logging("model-manager", config.logging.level)
    ModelManagerAgent(config).serve(stop_on_signals())
    return 0


if __name__ == "__main__":
    sys.exit(main())
