"""Live STT pieces without sockets or Whisper: endpointing, the commit policy, the stream
session (with an explicit clock and hand-made speech probabilities), and the streaming VAD
on real speech."""

from __future__ import annotations

import numpy as np
import pytest
from speech import SENTENCES, speak

from agents.live.agreement import LocalAgreement, after_prefix, cut_context, repeats_itself
from agents.live.endpointing import EndpointConfig, Endpointer, SpeechEnded, SpeechStarted
from agents.live.session import FINAL, PARTIAL, SPEECH_ENDED, SPEECH_STARTED, LiveConfig, LiveSession
from agents.live.vad import FRAME_SAMPLES, FRAME_SECONDS, SAMPLE_RATE, StreamingVad

F = FRAME_SECONDS


def frames(seconds: float, prob: float) -> list[float]:
    return [prob] * round(seconds / F)


# --- endpointing ------------------------------------------------------------------------------


def test_silence_starts_nothing():
    assert Endpointer().push(frames(10, 0.05)) == []


def test_one_utterance_padded_and_ended_after_the_silence():
    config = EndpointConfig(min_speech_s=0.25, min_silence_s=0.5, speech_pad_s=0.2)
    ep = Endpointer(config)
    silence_frames = frames(1.0, 0.0)
    assert ep.push(silence_frames) == []
    events = ep.push(frames(2.0, 0.9))
    speech_from = len(silence_frames) * F
    assert events == [SpeechStarted(pytest.approx(speech_from - 0.2))]
    assert ep.in_speech
    pause = frames(0.5, 0.0)
    assert ep.push(pause[:-1]) == []  # not yet: one frame short of min_silence_s
    ended = ep.push(pause[-1:])
    speech_to = speech_from + 2.0
    assert ended == [SpeechEnded(pytest.approx(speech_from - 0.2), pytest.approx(speech_to + 0.2, abs=F))]
    assert not ep.in_speech


def test_a_short_burst_is_not_speech_and_a_short_pause_does_not_end_it():
    ep = Endpointer(EndpointConfig(min_speech_s=0.25, min_silence_s=0.5))
    assert ep.push(frames(0.2, 0.9) + frames(1.0, 0.0)) == []  # a click
    events = ep.push(frames(1.0, 0.9) + frames(0.3, 0.0) + frames(1.0, 0.9) + frames(0.6, 0.0))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]


def test_probabilities_between_the_thresholds_continue_the_current_state():
    ep = Endpointer(EndpointConfig(threshold=0.5, neg_threshold=0.35, min_silence_s=0.5))
    assert ep.push(frames(1.0, 0.4)) == []  # never started: not speech
    events = ep.push(frames(0.5, 0.9) + frames(2.0, 0.4))  # keeps going: not silence
    assert [type(e) for e in events] == [SpeechStarted]
    assert [type(e) for e in ep.push(frames(0.6, 0.1))] == [SpeechEnded]


def test_a_long_utterance_is_cut_in_its_last_pause_and_the_next_starts_there():
    config = EndpointConfig(max_utterance_s=5.0, min_pause_s=0.1, min_silence_s=0.5, speech_pad_s=0.2)
    ep = Endpointer(config)
    events = ep.push(frames(2.0, 0.9) + frames(0.2, 0.0) + frames(4.0, 0.9))
    started, ended, restarted = events
    assert isinstance(started, SpeechStarted) and started.start_s == 0.0
    assert isinstance(ended, SpeechEnded) and ended.cut
    assert ended.end_s == pytest.approx(2.1, abs=2 * F)  # the middle of the pause
    assert restarted == SpeechStarted(ended.end_s)  # no audio lost between them
    assert ended.end_s - ended.start_s <= config.max_utterance_s
    assert ep.in_speech


def test_a_long_utterance_without_pauses_is_cut_at_the_limit():
    config = EndpointConfig(max_utterance_s=5.0)
    events = Endpointer(config).push(frames(12.0, 0.9))
    cuts = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(cuts) == 2
    assert all(e.cut and e.end_s - e.start_s == pytest.approx(5.0, abs=F) for e in cuts)


def test_flush_ends_the_open_utterance_at_the_end_of_the_audio():
    ep = Endpointer()
    ep.push(frames(1.0, 0.9))
    (ended,) = ep.flush(1.01)
    assert isinstance(ended, SpeechEnded) and ended.end_s == pytest.approx(1.01)
    assert ep.flush(2.0) == []


# --- the commit policy ------------------------------------------------------------------------


def test_two_agreeing_decodes_commit_their_common_prefix():
    agreement = LocalAgreement(hold_back=0)  # LocalAgreement-2 as it stands
    assert agreement.update("the quick".split()) == ["the", "quick"]
    assert agreement.committed == []
    agreement.update("the quick brown fax".split())
    assert agreement.committed == ["the", "quick"]
    agreement.update("The quick brown fox jumps".split())
    assert agreement.committed == ["the", "quick", "brown"]


def test_the_last_agreed_word_is_committed_only_once_a_later_word_agrees_too():
    agreement = LocalAgreement()  # hold_back=1
    agreement.update("Play some chairs".split())  # "jazz", cut in half by the audio's end
    assert agreement.update("Play some chairs".split()) == ["Play", "some", "chairs"]
    assert agreement.committed == ["Play", "some"]
    assert agreement.update("Play some jazz.".split()) == ["Play", "some", "jazz."]
    assert agreement.finish("Play some jazz.".split()) == ["Play", "some", "jazz."]
    with pytest.raises(ValueError):
        LocalAgreement(hold_back=-1)


def test_committed_words_are_never_revised_and_the_final_keeps_them():
    agreement = LocalAgreement(hold_back=0)
    agreement.update("I scream for".split())
    agreement.update("I scream for ice".split())
    assert agreement.committed == ["I", "scream", "for"]
    # Whisper changes its mind about the committed words: they stay.
    shown = agreement.update("Ice cream for ice cream".split())
    assert shown[:3] == ["I", "scream", "for"]
    assert agreement.finish("Ice cream for ice cream.".split()) == ["I", "scream", "for", "ice", "cream."]


def test_words_agree_across_case_and_punctuation():
    agreement = LocalAgreement(hold_back=0)
    agreement.update(["Hello,", "world"])
    agreement.update(["hello", "World."])
    assert agreement.committed == ["hello", "World."]


def test_after_prefix_aligns_a_changed_word():
    assert after_prefix(["a", "b", "c"], ["a", "x", "c", "d", "e"]) == ["d", "e"]
    assert after_prefix(["a", "b"], ["a", "b", "c"]) == ["c"]
    assert after_prefix([], ["a"]) == ["a"]
    assert after_prefix(["q"], ["z", "y"]) == ["y"]


def test_cut_context_finds_the_context_heard_again_differently_or_not_at_all():
    assert cut_context(["Yes,", "please."], "Yes, please... No thanks.".split()) == ["No", "thanks."]
    assert cut_context(["Console", "mat."], "Council that. Go back!".split()) == ["Go", "back!"]
    assert cut_context(["go", "back"], "go back go back".split()) == ["go", "back"]
    # Left out, or heard as something else altogether: the new audio's words are unknown.
    assert cut_context(["How", "did", "it", "go?"], "Soundboard. What time is it?".split()) is None
    assert cut_context(["Yes,", "please."], ["No", "thanks."]) is None
    assert cut_context(["a"], []) is None


# --- the session ------------------------------------------------------------------------------


CHUNK_S = 0.1


class Feeder:
    """Feeds a session chunks of 100 ms at real-time pace on a simulated clock, and starts
    each partial decode as soon as it is wanted (it then shows in the step's decodes)."""

    def __init__(self, session: LiveSession) -> None:
        self.session = session
        self.now = 0.0
        self.pending_frames = 0.0

    def feed(self, seconds: float, prob: float) -> list:
        steps = []
        for _ in range(round(seconds / CHUNK_S)):
            self.now += CHUNK_S
            audio = np.full(round(CHUNK_S * SAMPLE_RATE), 0.01, dtype=np.float32)
            self.pending_frames += len(audio) / FRAME_SAMPLES
            whole = int(self.pending_frames)
            self.pending_frames -= whole
            step = self.session.push(audio, np.full(whole, prob, dtype=np.float32), self.now)
            partial = self.session.start_partial()
            step.decodes += [partial] if partial else []
            steps.append(step)
        return steps


def collect(steps: list) -> tuple[list, list, list]:
    return ([e for s in steps for e in s.events], [d for s in steps for d in s.decodes],
            [c for s in steps for c in s.cancelled])


def test_silence_costs_no_decode_and_keeps_little_audio():
    session = LiveSession()
    events, decodes, _ = collect(Feeder(session).feed(30.0, 0.01))
    assert events == [] and decodes == []
    assert session.buffered_seconds < 1.0


def test_partials_every_interval_then_one_final_after_the_silence():
    session = LiveSession(LiveConfig(decode_interval_s=0.5))
    feeder = Feeder(session)
    feeder.feed(0.5, 0.0)
    events, decodes, _ = collect(feeder.feed(1.0, 0.9))
    assert [e.type for e in events] == [SPEECH_STARTED]
    assert [d.final for d in decodes] == [False]  # one in flight; the next one is skipped
    first = decodes[0]
    step = session.decoded(first.decode_id, "Hello", feeder.now)
    assert [(e.type, e.text) for e in step.events] == [(PARTIAL, "Hello")]
    assert session.skipped_decodes == 1
    assert session.wants_partial  # it fell behind: the next one is wanted at once...
    second = session.start_partial()
    assert second is not None and session.start_partial() is None  # ...and covers all audio so far
    assert second.end_s == pytest.approx(session.audio_seconds)
    assert len(second.audio) == round((second.end_s - second.start_s) * SAMPLE_RATE)
    events, decodes, cancelled = collect(feeder.feed(0.6, 0.0))
    assert [e.type for e in events] == [SPEECH_ENDED]
    assert [d.final for d in decodes] == [True]
    assert cancelled == [second.decode_id]  # a partial of an ended utterance is not wanted
    assert session.decoded(second.decode_id, "Hello wor", feeder.now).events == []
    final = session.decoded(decodes[0].decode_id, "Hello world.", feeder.now + 0.3)
    (event,) = final.events
    assert (event.type, event.text, event.utterance) == (FINAL, "Hello world.", 0)
    assert event.start_s == pytest.approx(0.5 - 0.2, abs=FRAME_SECONDS)
    assert event.end_s == pytest.approx(1.5 + 0.2, abs=2 * FRAME_SECONDS)
    # From the arrival of the last speech to the final: the silence, then the decode.
    assert 0.3 < event.latency_s < 1.0
    assert session.decoded(decodes[0].decode_id, "again", feeder.now).events == []  # once only


def test_a_final_keeps_the_committed_words_of_the_partials():
    # A partial in the silence holds it all; every agreed word is committed at once.
    session = LiveSession(LiveConfig(decode_pad_s=0.1, commit_hold_back_words=0))
    feeder = Feeder(session)
    (_, decodes, _) = collect(feeder.feed(1.0, 0.9))
    session.decoded(decodes[0].decode_id, "I scream", feeder.now)
    (_, decodes, _) = collect(feeder.feed(0.5, 0.9))
    (partial,) = session.decoded(decodes[0].decode_id, "I scream for", feeder.now).events
    # Two decodes agreed on "I scream": those words are committed, "for" may still change.
    assert partial.to_wire()["committed"] == "I scream" and partial.to_wire()["text"] == "I scream for"
    _, decodes, _ = collect(feeder.feed(0.6, 0.0))
    # Started in the silence, this partial holds all the speech: its answer is the final.
    (last,) = decodes
    assert session.finals_from_partials == 1
    (event,) = session.decoded(last.decode_id, "Ice cream for you", feeder.now).events
    assert (event.type, event.text) == (FINAL, "I scream for you")


def test_a_looping_partial_neither_commits_nor_becomes_the_final():
    session = LiveSession(LiveConfig(decode_pad_s=0.1))  # a partial in the silence holds it all
    feeder = Feeder(session)
    looped = "Set a timer. Set a timer. Set a timer."
    collect(feeder.feed(1.0, 0.9))
    assert session.decoded(session.in_flight[0], looped, feeder.now).events == []
    (_, decodes, _) = collect(feeder.feed(0.5, 0.9))
    assert session.decoded(decodes[0].decode_id, looped, feeder.now).events == []
    assert session.partials_set_aside == 2
    # The partial started in the silence holds all the speech, but loops: the final is
    # decoded on its own.
    _, decodes, _ = collect(feeder.feed(0.3, 0.0))
    assert session.decoded(decodes[0].decode_id, looped, feeder.now).events == []
    events, decodes, _ = collect(feeder.feed(0.3, 0.0))
    assert [e.type for e in events] == [SPEECH_ENDED] and [d.final for d in decodes] == [True]
    (event,) = session.decoded(decodes[0].decode_id, "Set a timer.", feeder.now).events
    assert (event.type, event.text) == (FINAL, "Set a timer.")


def test_a_partial_that_was_to_be_the_final_and_failed_is_decoded_again_as_a_final():
    session = LiveSession(LiveConfig(decode_pad_s=0.1))  # a partial in the silence holds it all
    feeder = Feeder(session)
    collect(feeder.feed(1.0, 0.9))
    session.failed(session.in_flight[0], "timeout", "slow", feeder.now)
    _, decodes, _ = collect(feeder.feed(0.6, 0.0))
    (partial,) = decodes
    retry = session.failed(partial.decode_id, "timeout", "slow", feeder.now)
    assert retry.events == [] and len(retry.decodes) == 1 and retry.decodes[0].final
    np.testing.assert_array_equal(retry.decodes[0].audio, partial.audio)
    (event,) = session.decoded(retry.decodes[0].decode_id, "Hello.", feeder.now).events
    assert (event.type, event.text) == (FINAL, "Hello.")


def test_an_answered_partial_that_holds_all_the_speech_is_the_final_at_once():
    session = LiveSession(LiveConfig(decode_pad_s=0.1))  # a partial in the silence holds it all
    feeder = Feeder(session)
    collect(feeder.feed(1.0, 0.9))
    session.decoded(session.in_flight[0], "Good", feeder.now)
    _, decodes, _ = collect(feeder.feed(0.3, 0.0))  # a partial falls due in the silence
    session.decoded(decodes[0].decode_id, "Good morning.", feeder.now)
    events, decodes, _ = collect(feeder.feed(0.3, 0.0))
    assert decodes == []  # no decode of its own
    assert [(e.type, e.text) for e in events] == [(SPEECH_ENDED, ""), (FINAL, "Good morning.")]


def test_finals_go_out_in_order_and_a_failed_final_is_an_error_in_its_place():
    session = LiveSession()
    feeder = Feeder(session)
    finals = []
    for _ in range(3):
        _, decodes, _ = collect(feeder.feed(0.6, 0.9) + feeder.feed(0.6, 0.0))
        finals += [d for d in decodes if d.final]
    assert [d.utterance for d in finals] == [0, 1, 2]
    assert session.decoded(finals[2].decode_id, "three", feeder.now).events == []
    assert session.failed(finals[1].decode_id, "inference_failed", "boom", feeder.now).events == []
    events = session.decoded(finals[0].decode_id, "one", feeder.now).events
    assert [(e.type, e.utterance) for e in events] == [(FINAL, 0), ("error", 1), (FINAL, 2)]
    assert events[1].to_wire()["error"]["code"] == "inference_failed"


def test_a_partial_of_a_later_utterance_waits_for_the_earlier_final():
    session = LiveSession()
    feeder = Feeder(session)
    _, decodes, _ = collect(feeder.feed(0.6, 0.9) + feeder.feed(0.6, 0.0))
    (first_final,) = [d for d in decodes if d.final]
    _, decodes, _ = collect(feeder.feed(1.0, 0.9))
    partial = decodes[0]
    assert partial.utterance == 1 and not partial.final
    assert session.decoded(partial.decode_id, "second", feeder.now).events == []
    events = session.decoded(first_final.decode_id, "first", feeder.now).events
    assert [(e.type, e.text) for e in events] == [(FINAL, "first"), (PARTIAL, "second")]


def test_close_finalises_the_open_utterance_and_refuses_more_audio():
    session = LiveSession()
    feeder = Feeder(session)
    _, decodes, _ = collect(feeder.feed(1.0, 0.9))
    step = session.close(feeder.now)
    assert [e.type for e in step.events] == [SPEECH_ENDED]
    assert step.cancelled == [decodes[0].decode_id]
    (final,) = step.decodes
    assert final.final and final.end_s == pytest.approx(session.audio_seconds)
    assert not session.done
    session.decoded(final.decode_id, "bye", feeder.now)
    assert session.done
    with pytest.raises(ValueError):
        session.push(np.zeros(160, np.float32), np.zeros(0, np.float32), feeder.now)


def test_long_speech_keeps_bounded_audio():
    config = LiveConfig(endpoint=EndpointConfig(max_utterance_s=5.0))
    session = LiveSession(config)
    feeder = Feeder(session)
    steps = feeder.feed(60.0, 0.9)
    _, decodes, _ = collect(steps)
    assert len([d for d in decodes if d.final]) >= 11
    # The open utterance, or the context the next decodes may hear.
    assert session.buffered_seconds <= max(5.0, config.context_s) + 0.5
    assert all(len(d.audio) <= (5.0 + FRAME_SECONDS) * SAMPLE_RATE for d in decodes)


# --- the VAD on real speech -------------------------------------------------------------------


def _speech_with_pauses() -> tuple[np.ndarray, list[tuple[float, float]]]:
    pieces, spans, t = [], [], 0.0
    for sentence in SENTENCES[:3]:
        gap = np.zeros(SAMPLE_RATE, dtype=np.float32)
        spoken = speak(sentence)
        pieces += [gap, spoken]
        spans.append((t + 1.0, t + 1.0 + len(spoken) / SAMPLE_RATE))
        t += 1.0 + len(spoken) / SAMPLE_RATE
    pieces.append(np.zeros(SAMPLE_RATE, dtype=np.float32))
    return np.concatenate(pieces), spans


def test_streaming_vad_matches_the_whole_audio_model_whatever_the_chunks():
    from faster_whisper.vad import get_vad_model

    audio, _ = _speech_with_pauses()
    audio = np.pad(audio, (0, -len(audio) % FRAME_SAMPLES))
    whole = np.asarray(get_vad_model()(audio.copy())).reshape(-1)
    for chunk in (1600, 333, 4096):
        vad = StreamingVad()
        probs = np.concatenate([vad.push(audio[i : i + chunk]) for i in range(0, len(audio), chunk)])
        assert vad.pending_samples == 0
        np.testing.assert_allclose(probs, whole, atol=1e-5)


def test_vad_and_endpointer_find_each_sentence_of_real_speech():
    audio, spans = _speech_with_pauses()
    vad, ep = StreamingVad(), Endpointer()
    events = []
    for i in range(0, len(audio), 1600):
        events += ep.push(vad.push(audio[i : i + 1600]))
    events += ep.push(vad.flush()) + ep.flush(len(audio) / SAMPLE_RATE)
    ended = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(ended) == len(spans)
    for e, (start, end) in zip(ended, spans, strict=True):
        assert abs(e.start_s - start) < 0.35 and abs(e.end_s - end) < 0.35


# --- the worker thread ------------------------------------------------------------------------


def test_off_thread_runs_tasks_in_order_and_hands_back_exceptions():
    import zmq

    from agents.live.worker import OffThread

    worker = OffThread(zmq.Context.instance())
    try:
        for i in range(5):
            worker.submit(i, lambda i=i: i * i)
        worker.submit("bad", lambda: 1 / 0)
        finished: list = []
        while len(finished) < 6:
            assert worker.wake.poll(5000), "no wake-up from the worker"
            finished += worker.drain()
        assert [f.ticket for f in finished] == [0, 1, 2, 3, 4, "bad"]
        assert [f.outcome for f in finished[:5]] == [0, 1, 4, 9, 16]
        assert isinstance(finished[5].outcome, ZeroDivisionError)
    finally:
        worker.close()


def test_off_thread_lanes_keep_each_lanes_order_and_run_side_by_side():
    import threading

    import zmq

    from agents.live.worker import OffThread

    worker = OffThread(zmq.Context.instance(), lanes=2)
    other_lane_ran = threading.Event()
    try:
        # Lane 0's first task can only finish once lane 1 has run: one thread could not.
        worker.submit("a0", lambda: other_lane_ran.wait(10), lane=0)
        worker.submit("a1", lambda: "a1", lane=0)
        worker.submit("b0", other_lane_ran.set, lane=1)
        worker.submit("b1", lambda: "b1", lane=3)  # lanes wrap: 3 is lane 1
        finished: list = []
        while len(finished) < 4:
            assert worker.wake.poll(10_000), "no wake-up from the worker"
            finished += worker.drain()
        order = [f.ticket for f in finished]
        assert order.index("b0") < order.index("a0") < order.index("a1")
        assert order.index("b0") < order.index("b1")
        assert {f.ticket: f.outcome for f in finished}["a0"] is True
    finally:
        worker.close()


def _utterance(feeder: Feeder, session: LiveSession, text: str) -> None:
    """One utterance of 1 s and the silence that ends it, its final answered with `text`."""
    _, decodes, _ = collect(feeder.feed(1.0, 0.9) + feeder.feed(0.6, 0.0))
    (final,) = [d for d in decodes if d.final]
    session.decoded(final.decode_id, text, feeder.now)


def test_decodes_hear_the_previous_utterances_and_lose_their_words():
    session = LiveSession(LiveConfig(context_s=4.0))
    feeder = Feeder(session)
    _utterance(feeder, session, "Call my mother.")
    _, decodes, _ = collect(feeder.feed(1.0, 0.9))
    partial = decodes[0]
    assert partial.context_words == ("Call", "my", "mother.")
    assert partial.start_s < 0.1  # the audio reaches back over the first utterance
    (event,) = session.decoded(partial.decode_id, "Call my mother. Play", feeder.now).events
    assert (event.type, event.text, event.utterance) == (PARTIAL, "Play", 1)
    _, decodes, _ = collect(feeder.feed(0.6, 0.0))
    (final,) = [d for d in decodes if d.final]
    assert final.context_words == ("Call", "my", "mother.")
    # The final's audio runs decode_pad_s past the speech.
    assert final.end_s == pytest.approx(2.6 + 0.5, abs=2 * FRAME_SECONDS)
    (event,) = session.decoded(final.decode_id, "Call my mother, play some jazz.", feeder.now).events
    assert (event.type, event.text) == (FINAL, "play some jazz.")
    # Context only as far back as context_s: the third utterance hears the second alone.
    _, decodes, _ = collect(feeder.feed(1.0, 0.9) + feeder.feed(0.6, 0.0))
    (final,) = [d for d in decodes if d.final]
    assert final.context_words == ("play", "some", "jazz.")


def test_no_context_across_a_missing_or_failed_final():
    session = LiveSession()
    feeder = Feeder(session)
    _, decodes, _ = collect(feeder.feed(1.0, 0.9) + feeder.feed(0.6, 0.0))
    (first_final,) = [d for d in decodes if d.final]
    _, decodes, _ = collect(feeder.feed(1.0, 0.9))
    assert decodes[0].context_words == ()  # the first final is not out yet
    session.failed(first_final.decode_id, "inference_failed", "boom", feeder.now)
    _, decodes, _ = collect(feeder.feed(0.6, 0.0))
    (final,) = [d for d in decodes if d.final]
    assert final.context_words == ()  # its words are unknown
    assert LiveSession(LiveConfig(context_s=0)).config.context_s == 0


def test_a_final_with_context_that_lost_its_own_words_is_decoded_again_alone():
    session = LiveSession(LiveConfig(context_s=4.0))
    feeder = Feeder(session)
    _utterance(feeder, session, "Call my mother.")
    _, decodes, _ = collect(feeder.feed(0.3, 0.9) + feeder.feed(0.6, 0.0))
    (final,) = [d for d in decodes if d.final]
    assert final.context_words == ("Call", "my", "mother.")
    # Whisper stopped after the context: nothing of this utterance's own came back.
    step = session.decoded(final.decode_id, "Call my mother.", feeder.now)
    assert step.events == [] and session.finals_retried_alone == 1
    (alone,) = step.decodes
    assert alone.final and alone.context_words == () and alone.end_s == final.end_s
    assert alone.start_s > final.start_s  # the utterance's own audio only
    (event,) = session.decoded(alone.decode_id, "Stop.", feeder.now).events
    assert (event.type, event.text) == (FINAL, "Stop.")


def test_a_decode_whose_answer_holds_no_reading_of_the_context_is_not_trusted():
    session = LiveSession(LiveConfig(context_s=4.0))
    feeder = Feeder(session)
    _utterance(feeder, session, "How did it go?")  # Whisper's mishearing of "Sounds good."
    _, decodes, _ = collect(feeder.feed(1.0, 0.9))
    (partial,) = decodes
    assert partial.context_words == ("How", "did", "it", "go?")
    # The context heard as something else altogether: which words are new cannot be told.
    assert session.decoded(partial.decode_id, "Soundboard. What time is it?", feeder.now).events == []
    assert session.partials_set_aside == 1
    _, decodes, _ = collect(feeder.feed(0.6, 0.0))
    (final,) = [d for d in decodes if d.final]
    step = session.decoded(final.decode_id, "Soundboard. What time is it?", feeder.now)
    (alone,) = step.decodes
    assert step.events == [] and alone.context_words == () and session.finals_retried_alone == 1
    (event,) = session.decoded(alone.decode_id, "What time is it?", feeder.now).events
    assert (event.type, event.text) == (FINAL, "What time is it?")


def test_a_final_with_context_that_loops_on_its_own_words_is_decoded_again_alone():
    assert repeats_itself("Open the garage door Open the garage door.".split())
    assert repeats_itself("sounds good, sounds good".split())
    assert not repeats_itself("Go back. Next one.".split())
    assert not repeats_itself("no no".split())  # one word twice is speech as often as a loop
    session = LiveSession(LiveConfig(context_s=4.0))
    feeder = Feeder(session)
    _utterance(feeder, session, "Remind me to buy milk.")
    _, decodes, _ = collect(feeder.feed(0.3, 0.9) + feeder.feed(0.6, 0.0))
    (final,) = [d for d in decodes if d.final]
    looped = "Remind me to buy milk. Open the door, open the door."
    step = session.decoded(final.decode_id, looped, feeder.now)
    (alone,) = step.decodes
    assert alone.context_words == () and session.finals_retried_alone == 1
    (event,) = session.decoded(alone.decode_id, "Open the door.", feeder.now).events
    assert (event.type, event.text) == (FINAL, "Open the door.")
