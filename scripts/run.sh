#!/usr/bin/env bash
# Set up (first run only) and start the whole bus on the bundled models:
# STT on tcp://127.0.0.1:5800, TTS on tcp://127.0.0.1:5801. Ctrl-C stops it gracefully.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m agents.launcher "$@"
