"""The pure part of the gateway's Realtime transcription sessions: settings from
`session.update`, and bus live-stream events turned into Realtime events."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from agents.gateway.bus import BusReplyError
from agents.gateway.formats import PcmStreamDecoder
from agents.gateway.realtime import LiveRun
from agents.gateway.realtime_events import RealtimeError, RealtimeSettings, TranscriptEvents


def bus_event(seq: int, kind: str, utterance: int = 0, **fields) -> dict:
    return {"seq": seq, "type": kind, "utterance": utterance, "text": "", "start_s": 1.0, "end_s": None,
            **fields}


def test_events_come_out_in_stream_order_and_deltas_add_up_to_the_transcript():
    events = TranscriptEvents("t")
    stream = [
        bus_event(0, "speech_started"),
        bus_event(1, "partial", text="Please call", committed=""),
        bus_event(2, "partial", text="Please call me bag", committed="Please call"),
        bus_event(3, "partial", text="Please call me back when", committed="Please call me back"),
        bus_event(4, "speech_ended", end_s=3.5),
        bus_event(5, "final", text="Please call me back when you get this message.", end_s=3.5),
    ]
    # The event reader's reply can overtake the audio sender's: held until the gap is filled.
    assert events.take([stream[2], stream[3]]) == []
    out = events.take([stream[0], stream[1], stream[4], stream[5]])
    kinds = [e["type"] for e in out]
    assert kinds == ["input_audio_buffer.speech_started",
                     "conversation.item.input_audio_transcription.delta",
                     "conversation.item.input_audio_transcription.delta",
                     "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                     "conversation.item.input_audio_transcription.delta",
                     "conversation.item.input_audio_transcription.completed"]
    deltas = [e["delta"] for e in out if e["type"].endswith(".delta")]
    assert deltas == ["Please call", " me back", " when you get this message."]  # never tentative words
    assert "".join(deltas) == out[-1]["transcript"]
    assert out[0]["audio_start_ms"] == 1000 and out[3]["audio_end_ms"] == 3500
    assert len({e["event_id"] for e in out}) == len(out)


def test_a_second_stream_keeps_item_ids_unique_and_times_from_the_connections_start():
    events = TranscriptEvents("t")
    first = events.take([bus_event(0, "speech_started"), bus_event(1, "speech_ended", end_s=2.0),
                         bus_event(2, "final", text="One.", end_s=2.0)])
    events.next_stream(offset_ms=5000)
    second = events.take([bus_event(0, "speech_started"), bus_event(1, "speech_ended", end_s=2.0),
                          bus_event(2, "error", error={"code": "timeout", "message": "too slow"})])
    assert first[0]["item_id"] != second[0]["item_id"]
    assert second[0]["audio_start_ms"] == 6000
    committed = second[2]
    assert committed["type"] == "input_audio_buffer.committed"
    assert committed["previous_item_id"] == first[0]["item_id"]
    failed = second[-1]
    assert failed["type"] == "conversation.item.input_audio_transcription.failed"
    assert failed["error"]["code"] == "timeout"


def test_settings_from_session_update():
    settings = RealtimeSettings().updated({"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000},
        "transcription": {"model": "gpt-4o-transcribe", "language": "de"},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 800, "threshold": 0.6},
        "noise_reduction": None}}})
    assert (settings.sample_rate, settings.model, settings.language) == (16000, "gpt-4o-transcribe", "de")
    assert (settings.server_vad, settings.silence_duration_ms, settings.threshold) == (True, 800, 0.6)
    manual = settings.updated({"audio": {"input": {"turn_detection": None,
                                                   "format": {"type": "audio/pcma"}}}})
    assert (manual.server_vad, manual.format, manual.sample_rate) == (False, "audio/pcma", 8000)
    assert manual.language == "de"  # what an update leaves out stays
    shown = manual.session_object()["audio"]["input"]
    assert shown["turn_detection"] is None and shown["format"] == {"type": "audio/pcma"}


def test_pcm_arriving_in_odd_pieces_decodes_as_the_whole_does():
    rate = 24000
    tone = (np.sin(np.arange(rate) * 2 * np.pi * 440 / rate) * 10000).astype("<i2").tobytes()
    whole = PcmStreamDecoder("audio/pcm", rate)
    expected = np.concatenate([whole.decode(tone), whole.flush()])
    pieces = PcmStreamDecoder("audio/pcm", rate)
    cuts = [0, 1, 4801, 9000, 9001, len(tone)]  # mid-sample cuts included
    got = np.concatenate([pieces.decode(tone[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
                         + [pieces.flush()])
    assert len(got) == len(expected) == 16000
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_beta_transcription_session_update_is_read_as_the_ga_one():
    beta = RealtimeSettings().updated({
        "input_audio_format": "g711_ulaw",
        "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": ""},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 700}})
    assert (beta.format, beta.sample_rate, beta.model, beta.language) == ("audio/pcmu", 8000,
                                                                          "gpt-4o-transcribe", "en")
    assert (beta.server_vad, beta.silence_duration_ms) == (True, 700)
    assert RealtimeSettings().updated({"input_audio_format": "pcm16"}).sample_rate == 24000
    with pytest.raises(RealtimeError):
        RealtimeSettings().updated({"input_audio_format": "mp3"})


class _StreamGoneLink:
    """A bus live stream that the bus has dropped: every call is answered not_found."""

    done = False

    def __init__(self) -> None:
        self.released = False

    async def send_audio(self, samples: np.ndarray) -> list[dict]:
        raise BusReplyError({"code": "not_found", "message": "stream s1 was closed: idle for 60 s"})

    async def next_events(self, timeout_ms: int = 1000) -> list[dict]:
        raise BusReplyError({"code": "not_found", "message": "stream s1 was closed: idle for 60 s"})

    def release(self) -> None:
        self.released = True


class _Recorder:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    async def deliver(self, bus_events: list[dict]) -> None:
        raise AssertionError("nothing to deliver")

    async def send_error(self, code: str, message: str, *_: object) -> None:
        self.errors.append((code, message))


def test_a_stream_the_bus_dropped_is_gone_after_one_error_per_task():
    async def scenario() -> tuple[LiveRun, _Recorder, _StreamGoneLink]:
        recorder, link = _Recorder(), _StreamGoneLink()
        run = LiveRun(recorder, link)  # type: ignore[arg-type]
        run.audio.put_nowait(np.zeros(1600, np.float32))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(recorder.errors) == 2:
                break
        run.cancel()
        return run, recorder, link

    run, recorder, link = asyncio.run(scenario())
    # The connection opens a new stream for the next audio instead of feeding a dead one.
    assert run.gone and link.released
    assert [code for code, _ in recorder.errors] == ["not_found", "not_found"]
