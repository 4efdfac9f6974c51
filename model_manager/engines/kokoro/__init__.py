"""Kokoro text-to-speech: the engine, its batched forward, weights, voices, G2P and text splitting."""
