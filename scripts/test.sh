#!/usr/bin/env bash
# Set up (first run only) and run the test suite: lint, then pytest, in two tiers:
#   tests/unit/  no models, no sockets: seconds      (scripts/test.sh unit  runs only these)
#   tests/bus/   real sockets on 127.0.0.1 and the real bundled Whisper and Kokoro weights
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"

if [ "${1:-}" = "unit" ]; then
    shift
    .venv/bin/ruff check .
    exec .venv/bin/python -m pytest tests/unit "$@"
fi

# The tests speak their own test audio with espeak-ng, and open the monitoring page in
# headless Chromium.
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    echo "voicebus: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
