"""`python -m model_manager`: run one ModelManagerAgent until SIGINT/SIGTERM.

`--models` and `--agents` override `model_manager.models` and `model_manager.agents`, so one
image serves every pool: `python -m model_manager --models whisper-tiny.en --agents
tcp://voicebus-agents-0.voicebus-agents:5810`.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from model_manager.agent import ModelManagerAgent
from model_manager.config import load_config
from model_manager.runtime import CONFIG_ERROR_EXIT, exit_on_config_error, setup_logging, stop_on_signals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a voicebus model manager.")
    parser.add_argument("--models", help="comma-separated model names to serve (default: all configured)")
    parser.add_argument("--agents", help="comma-separated agent backend addresses, tcp://host:port")
    args = parser.parse_args(argv)
    return exit_on_config_error(lambda: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    # As environment overrides, so that they are checked like every other setting.
    environ = dict(os.environ)
    for key, value in (("MODELS", args.models), ("AGENTS", args.agents)):
        if value:
            items = [item.strip() for item in value.split(",") if item.strip()]
            environ[f"VOICEBUS__MODEL_MANAGER__{key}"] = yaml.safe_dump(items, default_flow_style=True)
    config = load_config(environ=environ)
    setup_logging("model-manager", config.logging.level)
    manager = ModelManagerAgent(config)
    manager.serve(stop_on_signals())
    # A model that cannot load is a configuration to fix, not a crash to restart.
    return CONFIG_ERROR_EXIT if manager.load_error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
