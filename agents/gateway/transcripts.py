"""A bus transcription reply in OpenAI's response formats: json, text, srt, vtt and
verbose_json (segments and, when asked, words). Pure functions of the reply."""

from __future__ import annotations

import functools
from typing import Any

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
#: Formats that need the bus to return segments.
TIMED_FORMATS = ("srt", "vtt", "verbose_json")
SEGMENT_STATS = ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob")
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain",
               "srt": "application/x-subrip", "vtt": "text/vtt"}


def clock(seconds: float, decimal: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT)."""
    millis = int(round(max(seconds, 0.0) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: list[dict[str, Any]]) -> str:
    cues = [f"{i}\n{clock(s['start'], ',')} --> {clock(s['end'], ',')}\n{s['text'].strip()}\n"
            for i, s in enumerate(segments, 1)]
    return "\n".join(cues)


def vtt(segments: list[dict[str, Any]]) -> str:
    cues = [f"{clock(s['start'], '.')} --> {clock(s['end'], '.')}\n{s['text'].strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def language_name(code: str | None) -> str:
    """OpenAI's verbose_json names the language ("english"), not its code."""
    return _language_names().get(code or "", code or "")


@functools.cache
def _language_names() -> dict[str, str]:
    # Whisper's own table, from transformers (a dependency); imported on first use, as it is slow.
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return dict(LANGUAGES)


def verbose_json(reply: dict[str, Any], task: str, duration: float, with_segments: bool, with_words: bool
                 ) -> dict[str, Any]:
    body: dict[str, Any] = {"task": task, "language": language_name(reply.get("language")),
                            "duration": round(duration, 3), "text": reply["text"]}
    if with_segments:
        body["segments"] = [
            {"id": s.get("id", i), "seek": 0, "start": s["start"], "end": s["end"], "text": s["text"],
             "tokens": [], **{key: s.get(key, 0.0) for key in SEGMENT_STATS}}
            for i, s in enumerate(reply.get("segments", []))]
    if with_words:
        body["words"] = [{"word": w["word"].strip(), "start": w["start"], "end": w["end"],
                          "probability": w.get("probability")} for w in reply.get("words", [])]
    return body


def text_deltas(reply: dict[str, Any]) -> list[str]:
    """The transcript in pieces, one per segment where the segment's text is found in order,
    which always join to exactly `reply["text"]` (what streamed deltas must add up to)."""
    text = reply["text"]
    pieces: list[str] = []
    cursor = 0
    for segment in reply.get("segments") or []:
        found = text.find(segment["text"].strip(), cursor)
        if found < 0 or not segment["text"].strip():
            continue
        end = found + len(segment["text"].strip())
        pieces.append(text[cursor:end])
        cursor = end
    if cursor < len(text) or not pieces:
        pieces.append(text[cursor:])
    return pieces


def render(reply: dict[str, Any], response_format: str, task: str, duration: float,
           granularities: set[str]) -> tuple[Any, str]:
    """(body, media type): a dict for the JSON formats, a str for the others."""
    if response_format == "json":
        return {"text": reply["text"]}, MEDIA_TYPES["json"]
    if response_format == "text":
        return reply["text"] + "\n", MEDIA_TYPES["text"]
    if response_format == "srt":
        return srt(reply.get("segments", [])), MEDIA_TYPES["srt"]
    if response_format == "vtt":
        return vtt(reply.get("segments", [])), MEDIA_TYPES["vtt"]
    body = verbose_json(reply, task, duration, "segment" in granularities or "word" not in granularities,
                        "word" in granularities)
    return body, MEDIA_TYPES["verbose_json"]
