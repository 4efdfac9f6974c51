#!/usr/bin/env bash
# One command for a CUDA machine: Whisper and Kokoro throughput by batch size, the window
# policy's gain, the memory-based batch cap against torch.cuda.mem_get_info, and a real
# out-of-memory split (see scripts/gpu_check.py). Under 8 minutes; on a CPU it runs what it can.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-.venv/bin/python}"
exec timeout 480 "$PYTHON" scripts/gpu_check.py "$@"
