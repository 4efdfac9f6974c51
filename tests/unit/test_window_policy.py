"""Whisper's window policy alone: lead-in, windows and penalties by speech length (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from model_manager.engines.whisper.request import SAMPLE_RATE, prepare_request
from model_manager.engines.whisper.window_policy import (
    DEFAULT_LEAD_IN_S,
    DEFAULT_MIN_WINDOW_S,
    FULL_WINDOW_S,
    WindowPolicy,
)


def test_speech_that_gets_a_short_window_gets_a_lead_in_and_the_window_counts_it():
    policy = WindowPolicy(min_window_s=6)
    assert policy.lead_s(1.0) == DEFAULT_LEAD_IN_S
    assert policy.window_s(4.6 + policy.lead_s(4.6)) == 6 and policy.window_s(4.8 + policy.lead_s(4.8)) == 8
    assert policy.lead_s(28.9) == 0.0  # it would need the full window: left as it was
    assert WindowPolicy(min_window_s=30).lead_s(1.0) == 0.0  # the policy off: as before
    assert WindowPolicy().lead_s(1.0) == DEFAULT_LEAD_IN_S
    with pytest.raises(ValueError):
        WindowPolicy(lead_in_s=-1)


def test_the_shortest_windows_get_the_stronger_repetition_penalty():
    policy = WindowPolicy(min_window_s=4)
    assert policy.repetition_penalty(4) == policy.repetition_penalty(6) == 1.2
    assert policy.repetition_penalty(8) == policy.repetition_penalty(20) == 1.1
    assert policy.repetition_penalty(FULL_WINDOW_S) == 1.0


def test_a_prepared_request_starts_with_the_lead_in_only_on_short_windows():
    speech = np.full(2 * SAMPLE_RATE, 0.1, np.float32)  # vad off: taken as speech as it is

    def prepare(policy: WindowPolicy, multilingual: bool = False):
        return prepare_request({"audio": speech, "vad": False}, multilingual=multilingual,
                               known_languages={"en": 0}, model_name="m", policy=policy, vad_default=False)

    short = prepare(WindowPolicy())
    lead = round(DEFAULT_LEAD_IN_S * SAMPLE_RATE)
    assert len(short.audio) == len(speech) + lead and not short.audio[:lead].any()
    assert short.window_s == DEFAULT_MIN_WINDOW_S and short.received_s == 2.0
    full = prepare(WindowPolicy(min_window_s=30))
    assert np.array_equal(full.audio, speech) and full.window_s == FULL_WINDOW_S
    detecting = prepare(WindowPolicy(), multilingual=True)  # language detection: not measured with it
    assert detecting.language is None and np.array_equal(detecting.audio, speech)
