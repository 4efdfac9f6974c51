#!/usr/bin/env bash
# Set up everything voicebus needs, on a fresh machine or an existing one: .venv with torch
# 2.13.0 first (pinned, so no other dependency can swap it), then the project and its extras.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run again (it skips what is done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
EXTRAS="${VOICEBUS_EXTRAS:-multilingual,test}"
VENV="$ROOT/.venv"
STAMP="$VENV/.voicebus-installed"

if [ ! -x "$VENV/bin/python" ]; then
    echo "voicebus: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) extras=$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "voicebus: installing dependencies into $VENV"
    constraints="$VENV/torch-constraint.txt"
    echo "torch==2.13.0" > "$constraints"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
    "$VENV/bin/python" -m pip install --quiet -c "$constraints" -e ".[${EXTRAS}]"
    "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    echo "$want" > "$STAMP"
fi
