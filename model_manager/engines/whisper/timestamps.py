"""Segment and word timestamps, prompts and temperature fallback for Whisper on CTranslate2,
computed as faster-whisper computes them, for a batch of windows from separate requests.

Request fields (checked by request.check_details, which the engine's `prepare` calls):

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

`transcribe_windows` runs one batch of windows on the CTranslate2 model and tokens it is
given; window_batch.transcript_of joins the windows of each request. Everything else here
is pure.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, merge_punctuations

from model_manager.engines.whisper.features import N_FRAMES, log_mel_batch
from model_manager.engines.whisper.oom import out_of_memory_as_bus_error
from model_manager.engines.whisper.request import SAMPLE_RATE, Details
from model_manager.engines.whisper.result import Segment, Word
from model_manager.engines.whisper.tokens import WhisperTokens
from model_manager.engines.whisper.window_batch import CallPlan, Window, WindowText
from model_manager.engines.whisper.window_policy import MAX_TARGET_POSITIONS

#: Seconds per timestamp token, and encoder positions per second (align's time indices).
TIME_PRECISION = 0.02
TOKENS_PER_SECOND = 50
MEL_HOP = 160
TEMPERATURE_STEP = 0.2
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MEDIAN_FILTER_WIDTH = 7
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def decoder_prompt(start: Sequence[int], details: Details, tokens: WhisperTokens) -> list[int]:
    """`start` (WhisperTokens.prompt: ... <|notimestamps|>) with the previous text in front and,
    for timestamps, without <|notimestamps|>, so that the model writes timestamp tokens."""
    body = list(start)
    if details.timestamps is not None and body and body[-1] == tokens.no_timestamps:
        body = body[:-1]
    return ([tokens.sot_prev, *details.prompt_ids] if details.prompt_ids else []) + body


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


def word_alignment(tokenizer: Tokenizer, text_ids: Sequence[int], alignments: Sequence[tuple[int, int]],
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


def window_text(attempt: Attempt, language: str, details: Details, duration: float, tokens: WhisperTokens,
                words: Sequence[dict[str, Any]] | None) -> WindowText:
    """The text of one window and, when asked, its segments (and words), times from the
    window's start."""
    if details.timestamps is None:
        return WindowText(attempt.text, language)
    pieces = split_segments(attempt.ids, tokens.no_timestamps + 1, tokens.eot, duration)
    stats = {"avg_logprob": round(attempt.avg_logprob, 4),
             "compression_ratio": round(attempt.compression_ratio, 4),
             "no_speech_prob": round(attempt.no_speech_prob, 4), "temperature": attempt.temperature}
    # Plain dicts while word edges move them, as faster-whisper's own helpers work on dicts.
    edges = [{"start": start, "end": end} for start, end, _ in pieces]
    placed = None if words is None else words_into_segments(edges, words, [len(ids) for _, _, ids in pieces])
    segments = tuple(Segment(id=k, start=edge["start"], end=edge["end"], text=tokens.decode(ids), **stats)
                     for k, (edge, (_, _, ids)) in enumerate(zip(edges, pieces, strict=True)))
    timed = None if placed is None else tuple(
        Word(w["start"], w["end"], w["word"], w["probability"], w["segment"]) for w in placed)
    return WindowText(attempt.text, language, segments=segments, words=timed)


def transcribe_windows(model: ctranslate2.models.Whisper, tokens: WhisperTokens, windows: Sequence[Window],
                       name: str) -> list[WindowText]:
    """One WindowText per window of a batch whose requests asked for details and share one
    CallPlan (30 s windows and Whisper's own token limit, see request.prepare_request): encode
    once, generate at the first temperature, decode the windows that need it again at the next
    ones, then align the words of all windows at once. `name` labels an out-of-memory error."""
    plan = CallPlan.of(windows)
    details = [w.request.details for w in windows]
    first = details[0]
    mel = log_mel_batch([w.audio for w in windows], model.n_mels, N_FRAMES)
    with out_of_memory_as_bus_error(f"{name} batch of {len(windows)}"):
        encoded = model.encode(ctranslate2.StorageView.from_array(mel), to_cpu=False)
        requested = [w.request.language for w in windows]
        if any(lang is None for lang in requested):
            detected = model.detect_language(encoded)
            languages = [lang if lang is not None else tokens.language_of(scores[0][0])
                         for lang, scores in zip(requested, detected, strict=True)]
        else:
            languages = [lang for lang in requested if lang is not None]
        prompts = [decoder_prompt(tokens.prompt(lang, plan.task), d, tokens)
                   for lang, d in zip(languages, details, strict=True)]
        attempts: list[list[Attempt]] = [[] for _ in windows]
        pending = list(range(len(windows)))
        for temperature in temperature_schedule(first.temperature):
            if not pending:
                break
            features = encoded if len(pending) == len(windows) else \
                ctranslate2.StorageView.from_array(mel[pending])
            sampling = {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature} \
                if temperature > 0 else {"beam_size": plan.beam_size}
            results = model.generate(
                features, [prompts[i] for i in pending], max_length=MAX_TARGET_POSITIONS, return_scores=True,
                return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1], **sampling)
            for i, res in zip(pending, results, strict=True):
                ids = res.sequences_ids[0]
                attempts[i].append(Attempt(ids, tokens.decode(ids), average_logprob(res.scores[0], len(ids)),
                                           res.no_speech_prob, temperature))
            pending = [i for i in pending if attempts[i][-1].needs_fallback()]
        chosen = [a[-1] if not a[-1].needs_fallback() else best_attempt(a) for a in attempts]
        words: Sequence[list[dict[str, Any]] | None] = \
            _align_words(model, tokens, encoded, windows, languages, chosen, plan.task) \
            if first.timestamps == "word" else [None] * len(windows)
    return [window_text(attempt, lang, first, len(w.audio) / SAMPLE_RATE, tokens, own)
            for attempt, lang, w, own in zip(chosen, languages, windows, words, strict=True)]


def _align_words(model: ctranslate2.models.Whisper, tokens: WhisperTokens, encoded: ctranslate2.StorageView,
                 windows: Sequence[Window], languages: Sequence[str], chosen: Sequence[Attempt],
                 task: str) -> list[list[dict[str, Any]]]:
    """Words of each window; one `align` call per start sequence (language) in the batch."""
    text_ids = [tokens.text_ids(a.ids) for a in chosen]
    frames = [min(len(w.audio) // MEL_HOP, N_FRAMES) for w in windows]
    words: list[list[dict[str, Any]]] = [[] for _ in windows]
    encoder_output = np.asarray(encoded) if model.device == "cpu" else None
    by_language = itertools.groupby(sorted(range(len(windows)), key=lambda i: languages[i]),
                                    key=lambda i: languages[i])
    for language, group in by_language:
        members = [i for i in group if text_ids[i]]
        if not members:
            continue
        tokenizer = tokens.for_task(language, task)
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(encoder_output[members])) \
            if encoder_output is not None else ctranslate2.StorageView.from_array(
                log_mel_batch([windows[i].audio for i in members], model.n_mels))
        aligned = model.align(features, tokenizer.sot_sequence, [text_ids[i] for i in members],
                              [frames[i] for i in members], median_filter_width=MEDIAN_FILTER_WIDTH)
        for i, result in zip(members, aligned, strict=True):
            words[i] = word_alignment(tokenizer, text_ids[i], result.alignments, result.text_token_probs)
    return words
