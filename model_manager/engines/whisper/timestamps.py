"""Segment and word timestamps, prompts and temperature fallback for Whisper on CTranslate2,
computed as faster-whisper computes them, for a batch of windows from separate requests.

Request fields (checked by `prepare_details`, which the engine's `prepare` calls):

- `prompt`: text that came before the audio (names, spellings, style). It goes in front of
  the decoder prompt as ``<|startofprev|>`` + its tokens, the last 223 kept. CTranslate2 needs
  <|startoftranscript|> at the same position in every item of a batch, so the number of prompt
  tokens is part of the batch key.
- `temperature`: the first decoding temperature, in [0, 1] (0: greedy). A window whose text is
  too repetitive (gzip compression ratio over 2.4) or too unsure (average log-probability under
  -1, unless it is silence) is decoded again, sampling, at 0.2 more, up to 1.0; when every
  temperature fails, the best attempt is kept. Without the field, decoding is greedy (or the
  request's beam search) once, as for any request.
- `timestamps`: "segment" (segments with start, end and text, from Whisper's timestamp
  tokens) or "word" (also words with start, end and probability, from the cross-attention
  alignment CTranslate2's `align` computes).

`transcribe_windows` runs one batch of windows; `attach_details` joins the windows of each
request, shifting their times by where each window starts. Everything else here is pure.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer as WordTokenizer
from faster_whisper.transcribe import get_compression_ratio, merge_punctuations

from model_manager.engines.base import Request
from model_manager.engines.whisper.common import (
    MAX_TARGET_POSITIONS,
    SAMPLE_RATE,
    WhisperTokens,
    Window,
    WindowText,
    check_uniform,
    log_mel_batch,
    out_of_memory_as_bus_error,
)
from model_manager.engines.whisper.request import Details
from model_manager.engines.whisper.result import Segment, Transcript, Word
from model_manager.errors import INVALID_FIELD, BusError

if TYPE_CHECKING:
    from model_manager.engines.whisper.ct2 import CT2WhisperEngine

GRANULARITIES = ("segment", "word")
#: Seconds per timestamp token, and encoder positions per second (align's time indices).
TIME_PRECISION = 0.02
TOKENS_PER_SECOND = 50
MEL_HOP = 160
MAX_PROMPT_TOKENS = MAX_TARGET_POSITIONS // 2 - 1
MAX_PROMPT_CHARS = 10_000
TEMPERATURE_STEP = 0.2
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
#: One window's {"text", "language"[, "segments"[, "words"]]}, times from the window's start;
#: `attach_details` makes them a request's `Transcript`.
WindowResult = dict[str, Any]


def prepare_details(request: Mapping[str, Any], encode: Callable[[str], list[int]] | None,
                    model_name: str) -> dict[str, Any]:
    """The request with `prompt_ids` (from `prompt`), `temperature` and `timestamps` checked and
    normalised; BusError(INVALID_FIELD) for a bad value, or for any of them on an engine that
    cannot decode them (`encode` None). Idempotent."""
    prompt = request.get("prompt")
    temperature = request.get("temperature")
    granularity = request.get("timestamps")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise BusError(INVALID_FIELD, f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not 0.0 <= temperature <= 1.0:
            raise BusError(INVALID_FIELD, f"temperature must be a number in [0, 1], got {temperature!r:.50}")
        temperature = round(float(temperature), 3)
    if granularity is not None and granularity not in GRANULARITIES:
        raise BusError(INVALID_FIELD,
                       f"timestamps must be one of {list(GRANULARITIES)}, got {granularity!r:.50}")
    wanted = (prompt or "").strip() or temperature is not None or granularity is not None
    if wanted and encode is None:
        raise BusError(INVALID_FIELD, f"model {model_name} cannot decode prompt, temperature or "
                                      "timestamps; use a ctranslate2 model")
    prompt_ids = request.get("prompt_ids")
    if prompt_ids is None:
        text = (prompt or "").strip()
        prompt_ids = encode(" " + text)[-MAX_PROMPT_TOKENS:] if text and encode else []
    return {**request, "prompt_ids": list(prompt_ids), "temperature": temperature, "timestamps": granularity}


def decoder_prompt(start: Sequence[int], details: Details, tokens: WhisperTokens, sot_prev: int) -> list[int]:
    """`start` (WhisperTokens.prompt: ... <|notimestamps|>) with the previous text in front and,
    for timestamps, without <|notimestamps|>, so that the model writes timestamp tokens."""
    body = list(start)
    if details.timestamps is not None and body and body[-1] == tokens.no_timestamps:
        body = body[:-1]
    return ([sot_prev, *details.prompt_ids] if details.prompt_ids else []) + body


def temperature_schedule(first: float | None) -> list[float]:
    """The temperatures to try in order: `first`, then up by 0.2 to 1.0; None: greedy once."""
    if first is None:
        return [0.0]
    steps = int((1.0 - first) / TEMPERATURE_STEP + 1e-9)
    return [round(first + i * TEMPERATURE_STEP, 3) for i in range(steps + 1)] or [first]


@dataclass(frozen=True)
class Attempt:
    """One decoding of one window."""

    ids: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float

    @property
    def compression_ratio(self) -> float:
        return get_compression_ratio(self.text) if self.text else 0.0

    def needs_fallback(self) -> bool:
        """faster-whisper's rule: too repetitive, or too unsure unless it is silence."""
        unsure = self.avg_logprob < LOG_PROB_THRESHOLD
        if unsure and self.no_speech_prob > NO_SPEECH_THRESHOLD:
            return False
        return unsure or self.compression_ratio > COMPRESSION_RATIO_THRESHOLD


def best_attempt(attempts: Sequence[Attempt]) -> Attempt:
    """When every temperature failed: the most likely attempt that is not too repetitive, if any."""
    calm = [a for a in attempts if a.compression_ratio <= COMPRESSION_RATIO_THRESHOLD]
    return max(calm or attempts, key=lambda a: a.avg_logprob)


def average_logprob(score: float, length: int) -> float:
    """CTranslate2's score is the cumulative log-probability over length (length_penalty 1);
    faster-whisper averages it over the tokens plus the end token."""
    return score * length / (length + 1)


def split_segments(ids: Sequence[int], timestamp_begin: int, eot: int, duration: float
                   ) -> list[tuple[float, float, list[int]]]:
    """(start, end, text token ids) of each segment of one window, from its timestamp tokens,
    times in seconds from the window's start, clipped to [0, duration]. Text after the last
    closed segment (an unfinished one) becomes a segment up to the end of the window; a window
    decoded without timestamp pairs is one segment."""
    def seconds(token: int) -> float:
        return min(max((token - timestamp_begin) * TIME_PRECISION, 0.0), duration)

    segments: list[tuple[float, float, list[int]]] = []
    start: float | None = None
    text: list[int] = []
    for token in ids:
        if token >= timestamp_begin:
            if text:
                segments.append((start or 0.0, max(seconds(token), start or 0.0), text))
                start, text = None, []
            else:  # an opening timestamp
                start = seconds(token)
        elif token < eot:
            if start is None:
                start = segments[-1][1] if segments else 0.0
            text.append(token)
    if text:
        segments.append((start or 0.0, duration, text))
    return segments


def word_alignment(tokenizer: WordTokenizer, text_ids: Sequence[int], alignments: Sequence[tuple[int, int]],
                   token_probs: Sequence[float]) -> list[dict[str, Any]]:
    """Words of one window ({word, tokens, start, end, probability}, seconds from its start) from
    CTranslate2's alignment of its text tokens, as faster-whisper's `find_alignment` and
    `add_word_timestamps` derive them: a word starts where the alignment path first reaches
    its first token; words at sentence ends are capped at twice the median word length;
    punctuation is merged into its neighbour."""
    words, word_tokens = tokenizer.split_to_word_tokens(list(text_ids) + [tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    text_indices = np.array([pair[0] for pair in alignments])
    time_indices = np.array([pair[1] for pair in alignments])
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    timed = [{"word": word, "tokens": tokens, "start": float(jump_times[i]), "end": float(jump_times[j]),
              "probability": float(np.mean(token_probs[i:j]))}
             for word, tokens, i, j in zip(words, word_tokens, boundaries[:-1], boundaries[1:], strict=False)]
    durations = np.array([w["end"] - w["start"] for w in timed])
    durations = durations[durations.nonzero()]
    if len(durations):
        max_duration = 2 * min(0.7, float(np.median(durations)))
        for i in range(1, len(timed)):
            if timed[i]["end"] - timed[i]["start"] > max_duration:
                if timed[i]["word"] in ".。!！?？":
                    timed[i]["end"] = timed[i]["start"] + max_duration
                elif timed[i - 1]["word"] in ".。!！?？":
                    timed[i]["start"] = timed[i]["end"] - max_duration
    merge_punctuations(timed, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    return [w for w in timed if w["word"]]


def words_into_segments(segments: list[dict[str, Any]], words: Sequence[dict[str, Any]],
                        segment_tokens: Sequence[int]) -> list[dict[str, Any]]:
    """Hand each segment its words (by token count, in order) and move the segment's edges onto
    its first and last word, unless that word is implausibly long (faster-whisper's rule).
    Returns the words with their segment's index."""
    placed: list[dict[str, Any]] = []
    word_index = 0
    for seg_index, (segment, count) in enumerate(zip(segments, segment_tokens, strict=True)):
        taken = 0
        own: list[dict[str, Any]] = []
        while word_index < len(words) and taken < count:
            own.append({**words[word_index], "segment": seg_index})
            taken += len(words[word_index]["tokens"])
            word_index += 1
        if own:
            if not (segment["start"] < own[0]["end"] and segment["start"] - 0.5 > own[0]["start"]):
                segment["start"] = own[0]["start"]
            if not (segment["end"] > own[-1]["start"] and segment["end"] + 0.5 < own[-1]["end"]):
                segment["end"] = own[-1]["end"]
        placed += own
    return placed


def window_result(attempt: Attempt, language: str | None, details: Details, duration: float,
                  tokens: WhisperTokens, decode: Callable[[Sequence[int]], str],
                  words: Sequence[dict[str, Any]] | None) -> WindowResult:
    """The result of one window: text, language, and when asked segments (and words), times
    from the window's start."""
    result: WindowResult = {"text": attempt.text, "language": language}
    if details.timestamps is None:
        return result
    pieces = split_segments(attempt.ids, tokens.no_timestamps + 1, tokens.eot, duration)
    stats = {"avg_logprob": round(attempt.avg_logprob, 4),
             "compression_ratio": round(attempt.compression_ratio, 4),
             "no_speech_prob": round(attempt.no_speech_prob, 4), "temperature": attempt.temperature}
    segments = [{"start": start, "end": end, "text": decode(ids), **stats} for start, end, ids in pieces]
    result["segments"] = segments
    if words is not None:
        placed = words_into_segments(segments, words, [len(ids) for _, _, ids in pieces])
        result["words"] = [{"start": w["start"], "end": w["end"], "word": w["word"],
                            "probability": w["probability"], "segment": w["segment"]} for w in placed]
    return result


def attach_details(joined: Sequence[Transcript], windows: Sequence[tuple[int, np.ndarray]],
                   window_results: Sequence[WindowResult]) -> list[Transcript]:
    """`joined` (one transcript per request) with the `segments` and `words` of its windows,
    times shifted by where each window starts in the request's audio and rounded to
    milliseconds; transcripts of requests without timestamps are returned as they are."""
    offsets: dict[int, float] = {}
    segments: dict[int, list[Segment]] = {}
    words: dict[int, list[Word]] = {}
    for (owner, piece), result in zip(windows, window_results, strict=True):
        offset = offsets.get(owner, 0.0)
        offsets[owner] = offset + len(piece) / SAMPLE_RATE
        if "segments" not in result:
            continue
        own = segments.setdefault(owner, [])
        first_segment = len(own)
        for segment in result["segments"]:
            own.append(Segment(**{**segment, "id": len(own), "start": round(segment["start"] + offset, 3),
                                  "end": round(segment["end"] + offset, 3)}))
        if "words" in result:
            words.setdefault(owner, []).extend(
                Word(**{**word, "start": round(word["start"] + offset, 3),
                        "end": round(word["end"] + offset, 3), "probability": round(word["probability"], 4),
                        "segment": word["segment"] + first_segment})
                for word in result["words"])
    timed = list(joined)
    for owner, own in segments.items():
        timed[owner] = replace(timed[owner], segments=tuple(own),
                               words=tuple(words[owner]) if owner in words else None)
    return timed


def transcribe_windows_of(engine: CT2WhisperEngine, windows: Sequence[Window]) -> list[WindowText]:
    """`transcribe_windows` for the engine's typed windows (whose requests asked for details;
    they keep 30 s windows and Whisper's own token limit, see request.prepare_request)."""
    prepared = [{"audio": w.audio, "language": w.request.language, "task": w.request.task,
                 "beam_size": w.request.beam_size, "prompt_ids": list(w.request.details.prompt_ids),
                 "temperature": w.request.details.temperature, "timestamps": w.request.details.timestamps}
                for w in windows]
    texts = []
    for result in transcribe_windows(engine, prepared):
        extra = {k: v for k, v in result.items() if k in ("segments", "words")}
        texts.append(WindowText(result["text"], result["language"], False, extra))
    return texts


def transcribe_windows(engine: CT2WhisperEngine, prepared: Sequence[Request]) -> list[WindowResult]:
    """One {"text", "language"[, "segments"[, "words"]]} per window of a batch whose requests
    share their `Details.batch_key`: encode once, generate at the first temperature, decode the
    windows that need it again at the next ones, then align the words of all windows at once."""
    options = check_uniform(prepared)
    details = [Details.of(r) for r in prepared]
    first = details[0]
    mel = log_mel_batch([r["audio"] for r in prepared], engine.n_mels)
    sot_prev = _sot_prev(engine)
    with out_of_memory_as_bus_error(f"{engine.name} batch of {len(prepared)}"):
        encoded = engine._model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=False)
        languages: list[str] = [r["language"] for r in prepared]
        if any(lang is None for lang in languages):
            detected = engine._model.detect_language(encoded)
            languages = [lang if lang is not None else engine.tokens.language_of(scores[0][0])
                         for lang, scores in zip(languages, detected, strict=True)]
        prompts = [decoder_prompt(engine.tokens.prompt(engine.multilingual, lang, options.task), d,
                                  engine.tokens, sot_prev)
                   for lang, d in zip(languages, details, strict=True)]
        attempts: list[list[Attempt]] = [[] for _ in prepared]
        pending = list(range(len(prepared)))
        for temperature in temperature_schedule(first.temperature):
            if not pending:
                break
            features = encoded if len(pending) == len(prepared) else \
                ctranslate2.StorageView.from_array(mel[pending])
            sampling = {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature} \
                if temperature > 0 else {"beam_size": options.beam_size}
            results = engine._model.generate(
                features, [prompts[i] for i in pending], max_length=MAX_TARGET_POSITIONS, return_scores=True,
                return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1], **sampling)
            for i, res in zip(pending, results, strict=True):
                ids = res.sequences_ids[0]
                attempts[i].append(Attempt(ids, engine._decode(ids), average_logprob(res.scores[0], len(ids)),
                                           res.no_speech_prob, temperature))
            pending = [i for i in pending if attempts[i][-1].needs_fallback()]
        chosen = [a[-1] if not a[-1].needs_fallback() else best_attempt(a) for a in attempts]
        words = _align_words(engine, encoded, prepared, languages, chosen) if first.timestamps == "word" \
            else [None] * len(prepared)
    return [window_result(attempt, lang, first, len(r["audio"]) / SAMPLE_RATE, engine.tokens,
                          engine._decode, w)
            for attempt, lang, r, w in zip(chosen, languages, prepared, words, strict=True)]


def _sot_prev(engine: CT2WhisperEngine) -> int:
    sot_prev = engine._tokenizer.token_to_id("<|startofprev|>")
    if sot_prev is None:  # pragma: no cover - every Whisper vocabulary has it
        raise ValueError("no <|startofprev|> token in the vocabulary")
    return sot_prev


def _align_words(engine: CT2WhisperEngine, encoded: ctranslate2.StorageView, prepared: Sequence[Request],
                 languages: Sequence[str], chosen: Sequence[Attempt]) -> list[list[dict[str, Any]]]:
    """Words of each window; one `align` call per start sequence (language) in the batch."""
    task = check_uniform(prepared).task
    text_ids = [engine.tokens.text_ids(a.ids) for a in chosen]
    frames = [min(len(r["audio"]) // MEL_HOP, 3000) for r in prepared]
    words: list[list[dict[str, Any]]] = [[] for _ in prepared]
    encoder_output = np.asarray(encoded) if engine.device == "cpu" else None
    by_language = itertools.groupby(sorted(range(len(prepared)), key=lambda i: languages[i]),
                                    key=lambda i: languages[i])
    for language, group in by_language:
        members = [i for i in group if text_ids[i]]
        if not members:
            continue
        tokenizer = WordTokenizer(engine._tokenizer, engine.multilingual, task=task, language=language)
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(encoder_output[members])) \
            if encoder_output is not None else ctranslate2.StorageView.from_array(
                log_mel_batch([prepared[i]["audio"] for i in members], engine.n_mels))
        aligned = engine._model.align(features, tokenizer.sot_sequence, [text_ids[i] for i in members],
                                      [frames[i] for i in members], median_filter_width=MEDIAN_FILTER_WIDTH)
        for i, result in zip(members, aligned, strict=True):
            words[i] = word_alignment(tokenizer, text_ids[i], result.alignments, result.text_token_probs)
    return words
