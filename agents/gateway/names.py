"""The names clients send, as the bus knows them: OpenAI's model names (`whisper-1`, `tts-1`,
...) become the configured `model_pref`, and OpenAI's voice names (`alloy`, ...) the
configured voice packs, inside a mix too (`"alloy(2)+jm_kumo(1)"`). voicebus's own model and
voice names, and `fast` / `quality`, pass through unchanged."""

from __future__ import annotations

import re
from dataclasses import dataclass

from model_manager.config import GatewayConfig

# A voice name inside a Kokoro voice string (see model_manager/engines/kokoro/voices.py).
_VOICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class Names:
    model_names: dict[str, str]
    voice_names: dict[str, str]
    translation_model: str

    @classmethod
    def from_config(cls, settings: GatewayConfig) -> Names:
        return cls({k.lower(): v for k, v in settings.model_names.items()},
                   {k.lower(): v for k, v in settings.voice_names.items()}, settings.translation_model)

    def model_pref(self, model: str | None, translation: bool = False) -> str | None:
        """The bus's model_pref for a client's `model`; None means the task's first model."""
        if not model:
            return self.translation_model or None if translation else None
        known = self.model_names.get(model.lower())
        if known is None:
            return model
        if translation and not known:
            return self.translation_model or None
        return known or None

    def voice(self, voice: str | None) -> str | None:
        """The bus's voice string for a client's `voice` (each name of a mix mapped)."""
        if not voice:
            return None
        return _VOICE_NAME.sub(lambda m: self.voice_names.get(m.group(0).lower(), m.group(0)), voice)
