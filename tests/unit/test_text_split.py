"""text_split: pure functions, no models. Sizes are measured with `len` unless a test says so."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_manager.engines.kokoro.text_split import (
    LONG_SENTENCE_CHARS,
    MAX_PAUSE_SECONDS,
    Pause,
    SentenceStream,
    fit,
    format_pause,
    pack,
    parse_pause,
    parse_pauses,
    plan,
    split_clauses,
    split_for_streaming,
    split_hard,
    split_sentences,
    spoken_text,
)


def _letters(pieces: list[str]) -> str:
    """Everything but whitespace: what must survive any split."""
    return re.sub(r"\s+", "", "".join(pieces))


# --- pauses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "seconds"),
    [
        ("[pause:0.5]", 0.5),
        ("[pause:1]", 1.0),
        ("[Pause: 0.25s]", 0.25),
        ("[PAUSE:300ms]", 0.3),
        ("[ pause : 2 ]", 2.0),
        ("[pause:.5]", 0.5),
        ("[pause:0]", 0.0),
        ("[pause:10]", 10.0),
    ],
)
def test_pause_markers_parse(marker, seconds):
    assert parse_pauses(f"Hello {marker} world") == ["Hello ", Pause(seconds), " world"]


@pytest.mark.parametrize(
    "marker",
    ["[pause:abc]", "[pause:]", "[pause:-1]", "[pause:11]", "[pause:1 2]", "[pause:1e3]", "[pause:5 min]"],
)
def test_bad_pause_markers_raise(marker):
    with pytest.raises(ValueError):
        parse_pauses(f"Hello {marker} world")


def test_pauses_merge_and_blank_runs_drop():
    assert parse_pauses("[pause:1] [pause:0.5]Hi[pause:9][pause:9]  ") == [
        Pause(1.5),
        "Hi",
        Pause(MAX_PAUSE_SECONDS),
    ]
    assert parse_pauses("just text") == ["just text"]
    assert parse_pauses("   ") == []


def test_format_pause_round_trips():
    for seconds in (0.0, 0.25, 1.0, 2.5):
        assert parse_pause(format_pause(Pause(seconds))[len("[pause:") : -1]) == Pause(seconds)
        assert parse_pauses(format_pause(Pause(seconds))) == [Pause(seconds)]


def test_spoken_text_drops_markers():
    assert spoken_text("One. [pause:1] Two.") == "One.   Two."


# --- sentences and clauses ----------------------------------------------------------------


def test_sentences_split_at_terminal_punctuation():
    text = 'Hi there! Is it "done?" Yes... It is. Wait?! OK.'
    assert split_sentences(text) == ["Hi there!", 'Is it "done?"', "Yes...", "It is.", "Wait?!", "OK."]


def test_abbreviations_initials_and_lowercase_do_not_split():
    text = "Dr. Smith met J. R. Tolkien at 5 p.m. today. Then e.g. apples, etc. were served. Done."
    assert split_sentences(text) == [
        "Dr. Smith met J. R. Tolkien at 5 p.m. today.",
        "Then e.g. apples, etc. were served.",
        "Done.",
    ]


def test_paragraphs_split_but_single_newlines_are_spaces():
    text = "This line is\nhard wrapped.\n\nNew paragraph\nwithout a stop\n\n  \nLast"
    assert split_sentences(text) == ["This line is hard wrapped.", "New paragraph without a stop", "Last"]


def test_cjk_full_stops_split_and_stray_punctuation_joins_previous():
    assert split_sentences("今日は。明日は！Fine. !!") == ["今日は。", "明日は！", "Fine. !!"]


def test_clauses():
    assert split_clauses("First, second; third: fourth — fifth—sixth - seventh") == [
        "First,",
        "second;",
        "third:",
        "fourth —",
        "fifth—",
        "sixth -",
        "seventh",
    ]
    assert split_clauses("No breaks here at 3:30 or 1,000") == ["No breaks here at 3:30 or 1,000"]


# --- fitting -----------------------------------------------------------------------------


def test_fit_prefers_clauses_then_words_then_characters():
    assert fit("short", len, 10) == ["short"]
    assert fit("aaaa bbbb, cccc dddd", len, 10) == ["aaaa bbbb,", "cccc dddd"]
    assert fit("aaaa bbbb cccc dddd", len, 10) == ["aaaa bbbb", "cccc dddd"]
    assert fit("x" * 25, len, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_split_hard_keeps_every_character():
    word = "".join(chr(ord("a") + i % 26) for i in range(2003))
    pieces = split_hard(word, len, 510)
    assert "".join(pieces) == word
    assert all(len(p) <= 510 for p in pieces)


def test_pack_is_greedy_and_respects_the_limit_even_when_measure_is_not_additive():
    assert pack(["aa", "bb", "cc", "dd"], len, 5) == ["aa bb", "cc dd"]

    def lumpy(text: str) -> int:  # joining costs more than the estimate
        return len(text) + 3 * text.count(" ")

    pieces = pack(["aa", "bb", "cc", "dd"], lumpy, 8)
    assert all(lumpy(p) <= 8 for p in pieces)
    assert _letters(pieces) == "aabbccdd"


def test_plan_long_text_is_never_truncated():
    sentence = (
        "The committee reviewed every proposal carefully, weighing costs against benefits, "
        "and then it published a long report that nobody had time to read. "
    )
    text = sentence * 15 + "[pause:0.75] " + "word " * 700  # 700 words with no punctuation at all
    assert len(text) > 2000
    segments = plan(text, len, 510, 250)
    pieces = [s for s in segments if isinstance(s, str)]
    assert segments.count(Pause(0.75)) == 1
    assert all(len(p) <= 510 for p in pieces)
    assert _letters(pieces) == _letters([spoken_text(text)])
    before = segments.index(Pause(0.75))
    assert _letters([s for s in segments[:before] if isinstance(s, str)]) == _letters([sentence * 15])


def test_plan_target_packs_sentences_and_one_keeps_them_apart():
    text = "One. Two. Three. Four."
    assert plan(text, len, 510) == ["One. Two. Three. Four."]
    assert plan(text, len, 510, target=10) == ["One. Two.", "Three.", "Four."]
    assert plan(text, len, 510, target=1) == ["One.", "Two.", "Three.", "Four."]


def test_plan_raises_on_bad_marker():
    with pytest.raises(ValueError):
        plan("Hi [pause:x]", len, 510)


_words = st.text(alphabet=st.sampled_from("abcdefghij"), min_size=1, max_size=40)
_punct = st.sampled_from(["", "", "", ",", ".", "!", "?", ";", ":", " —", "\n", "\n\n"])


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(st.tuples(_words, _punct), min_size=1, max_size=60),
    limit=st.integers(min_value=5, max_value=80),
    target=st.integers(min_value=0, max_value=100),
)
def test_plan_property_fits_and_loses_nothing(tokens, limit, target):
    text = " ".join(word + punct for word, punct in tokens)
    pieces = [s for s in plan(text, len, limit, target) if isinstance(s, str)]
    assert all(0 < len(p) <= limit for p in pieces)
    assert _letters(pieces) == _letters([text])


# --- text that arrives in pieces ------------------------------------------------------------

_STREAM_WORDS = ["Hello", "there.", "Dr.", "Smith", "3.14", "e.g.", "ok?", "Yes!", "no", "wait...",
                 "[pause:0.5]", "\n\n", "\n", "and", "so.", "«Quoted.»", "end"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_STREAM_WORDS), max_size=25), st.lists(st.integers(1, 12), min_size=1))
def test_a_text_in_pieces_gives_the_sentences_of_the_whole_text(words: list[str], cuts: list[int]):
    text = " ".join(words)
    stream, got, start = SentenceStream(), [], 0
    for i in range(len(text)):
        size = cuts[i % len(cuts)]
        if start < len(text):
            got += stream.add(text[start:start + size])
            start += size
    got += stream.add(text[start:]) + stream.finish()
    assert got == split_for_streaming(text)


def test_a_sentence_is_handed_out_once_the_next_one_begins():
    stream = SentenceStream()
    assert stream.add("Call Dr.") == []
    assert stream.add(" Smith at 3.") == []  # "3." may go on as "3.30"
    assert stream.add("30. Then") == ["Call Dr. Smith at 3.30."]
    assert stream.add(" book a table.") == []
    assert stream.finish() == ["Then book a table."]
    assert stream.finish() == []


def test_a_long_sentence_without_a_full_stop_is_handed_out_at_its_clause_breaks():
    clauses = [f"then the {n}th item on the list, which is long enough" for n in range(20)]
    text = ", ".join(clauses) + " and that is all."
    stream, pieces = SentenceStream(), []
    for word in text.split():
        pieces += stream.add(word + " ")
    assert len(pieces) == 3  # about 1,000 characters: spoken before the text ends
    assert all(p.endswith(",") and len(p) < LONG_SENTENCE_CHARS + 60 for p in pieces)
    pieces += stream.finish()
    assert " ".join(pieces).split() == text.split()
    # Never inside a pause marker still arriving, whose colon may be followed by a space.
    stream = SentenceStream()
    assert stream.add("a" * LONG_SENTENCE_CHARS + " [pause: ") == []
    assert stream.add("1] b") == ["a" * LONG_SENTENCE_CHARS]  # the marker starts the next chunk
