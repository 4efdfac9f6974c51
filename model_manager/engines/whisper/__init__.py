"""Whisper speech-to-text: CTranslate2 and transformers engines, their weights, formats and audio windows."""
