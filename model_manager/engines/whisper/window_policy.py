"""How long an encoder window a request gets, and how many tokens it may decode.

Whisper was trained on 30 s windows, and the encoder's cost grows with the window, so a 2 s
command padded to 30 s pays fifteen times the encoder work it needs. CTranslate2 (and the
transformers engine, with its positional table sliced) accept shorter windows; what breaks
short windows is the decoder, which loops on a window much shorter than those it was
trained on. Four things keep it in check, all measured on scripts/wer_set.py's set:

- a floor (`min_window_s`, per model): no window is shorter than this;
- a bound on decoded tokens from the audio's length: a loop ends there, flagged truncated;
- a mild repetition penalty on short windows, which stops most loops before the bound, and a
  stronger one on the shortest, which loop most and hold too little speech to repeat a word
  often;
- a lead-in: silence before the speech. Whisper rarely saw speech start at a window's first
  frame, and clips cut to their speech (by the speech detector, or by the client) do: it
  then misreads the first word ("Hello there." as "The lone air" at 8 and 10 s windows).

Window lengths come from a few fixed buckets, so requests of similar length share one window
length and one batch, and a 2 s clip never pads to a 25 s neighbour's window.

Contract
--------
- `WindowPolicy(min_window_s=30)` is the policy off: every window is 30 s, decoding is
  bounded only by Whisper's own context and there is no repetition penalty (the engine's
  behaviour before short windows existed).
- `window_s(audio_s)` is the bucket that holds `audio_s + margin_s`, at least `min_window_s`,
  at most 30 s. Audio longer than 30 s is cut into 30 s windows and keeps them (short windows
  on long audio wreck its accuracy).
- `lead_s(speech_s)` is the silence to put before `speech_s` seconds of speech: `lead_in_s`
  when that gets a short window, else 0 (30 s windows and long audio are left as they were).
  `audio_s` above counts it. (prepare_request adds it where the language is known: language
  detection with it was not measured better.)
- `max_tokens(audio_s)` bounds the text tokens decoded from `audio_s` seconds of one window;
  None when the policy is off.
- `repetition_penalty(window_s)` is 1.0 (none) on 30 s windows, `shortest_window_repetition_
  penalty` on windows of at most SHORTEST_WINDOWS_S, `short_window_repetition_penalty` between.

Pure: no I/O, no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Whisper's training window, and the longest any request gets.
FULL_WINDOW_S = 30.0
#: Decoder context of every Whisper size; prompt + generated tokens must fit in it.
MAX_TARGET_POSITIONS = 448
#: Text tokens Whisper decodes at most from one window when nothing tighter bounds it
#: (openai-whisper's sample_len: half the decoder context; CTranslate2 stops there too).
MAX_TEXT_TOKENS = MAX_TARGET_POSITIONS // 2
#: The window lengths requests are rounded up to. Few enough that concurrent short requests
#: share one (and so one batch), fine enough that a 3 s clip does not pay for 10 s.
BUCKETS_S = (2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0)
#: Zero-padded frames after the speech: Whisper needs to "hear" the end of the utterance to
#: emit its last word and <|endoftext|> rather than trailing off or looping.
DEFAULT_MARGIN_S = 1.0
#: The floor of a model whose options do not set one: 10 s kept multilingual base's language
#: detection on short clips as at 30 s. tiny.en's floor is in config/llm_config.yaml, chosen
#: with `scripts/test_batch_processing.py --windows` (throughput beside WER for every floor)
#: and `scripts/wer_set.py eval --held-out 1000` (WER by policy, deterministic).
DEFAULT_MIN_WINDOW_S = 10.0
#: Silence before the speech of a short window (see the module docstring): 0.3 s, the speech
#: detector's own padding, is what the set measured best (0.6 s helped less).
DEFAULT_LEAD_IN_S = 0.3
#: Text tokens a window may decode: TOKENS_BASE + TOKENS_PER_S x its audio seconds; about
#: twice what the fastest clean speech of the set needs, and far below the 224 a looping
#: decoder reaches. (9 a second let more of a loop through: WER 19.7 against 18.8 at floor 6.)
TOKENS_BASE = 10
TOKENS_PER_S = 7.0
#: Mild, and only on short windows: it stops most loops before the bound. Floor 8 without
#: it: WER 28.3 against 22.8 with it; no floor without it 42.6 (not applied on 30 s windows).
SHORT_WINDOW_REPETITION_PENALTY = 1.1
#: Windows this short loop most ("Goodbye." decoded as the word 19 times at 6 s with 1.1) and
#: hold at most about 5 s of speech, where a repeated word is rare; longer speech (phone
#: numbers, lists) loses more to a stronger penalty than it gains.
SHORTEST_WINDOWS_S = 6.0
SHORTEST_WINDOW_REPETITION_PENALTY = 1.2


@dataclass(frozen=True)
class WindowPolicy:
    min_window_s: float = DEFAULT_MIN_WINDOW_S
    margin_s: float = DEFAULT_MARGIN_S
    #: Tuning knobs, fixed by measurement; scripts/wer_set.py varies them to show why.
    tokens_base: int = TOKENS_BASE
    tokens_per_s: float = TOKENS_PER_S
    short_window_repetition_penalty: float = SHORT_WINDOW_REPETITION_PENALTY
    shortest_window_repetition_penalty: float = SHORTEST_WINDOW_REPETITION_PENALTY
    lead_in_s: float = DEFAULT_LEAD_IN_S

    def __post_init__(self) -> None:
        if not 0 <= self.min_window_s <= FULL_WINDOW_S:
            raise ValueError(f"min_window_s must be in 0..{FULL_WINDOW_S:g}, got {self.min_window_s!r}")
        if not 0 <= self.margin_s <= FULL_WINDOW_S:
            raise ValueError(f"window margin must be in 0..{FULL_WINDOW_S:g} s, got {self.margin_s!r}")
        if not 0 <= self.lead_in_s <= FULL_WINDOW_S:
            raise ValueError(f"window lead-in must be in 0..{FULL_WINDOW_S:g} s, got {self.lead_in_s!r}")

    @property
    def short_windows(self) -> bool:
        """False when every window is 30 s (`min_window_s: 30`): the policy is off."""
        return self.min_window_s < FULL_WINDOW_S

    def window_s(self, audio_s: float) -> float:
        if not self.short_windows or audio_s > FULL_WINDOW_S:
            return FULL_WINDOW_S
        needed = max(self.min_window_s, audio_s + self.margin_s)
        return next((b for b in BUCKETS_S if b >= needed), FULL_WINDOW_S)

    def lead_s(self, speech_s: float) -> float:
        if not self.short_windows or self.window_s(speech_s + self.lead_in_s) >= FULL_WINDOW_S:
            return 0.0
        return self.lead_in_s

    def max_tokens(self, audio_s: float) -> int | None:
        if not self.short_windows:
            return None
        return self.tokens_base + math.ceil(self.tokens_per_s * min(audio_s, FULL_WINDOW_S))

    def repetition_penalty(self, window_s: float) -> float:
        if window_s >= FULL_WINDOW_S:
            return 1.0
        if window_s <= SHORTEST_WINDOWS_S:
            return self.shortest_window_repetition_penalty
        return self.short_window_repetition_penalty


def window_frames(window_s: float) -> int:
    """Log-mel frames (10 ms each) of a window; even, as Whisper's stride-2 convolution needs."""
    frames = int(round(window_s * 100))
    return frames + frames % 2
