"""Synthetic speech with a ground-truth phoneme timeline, from libespeak-ng (the ``espeakng-loader`` wheel).

``Speaker.say(text)`` returns the waveform and the phoneme events espeak-ng reports with their times
(``espeakINITIALIZE_PHONEME_EVENTS``): the ground truth from which the avatar's visemes are drawn.
Random sentences come from a fixed vocabulary, so training and held-out text are chosen by seed.
espeak-ng speaks about 800x faster than real time, so speech is made on the fly.

The library is reached through ``ctypes`` (no Python binding is needed); it is process-global and
not thread-safe. It also keeps running state between utterances (its pitch flutter advances with every
sample), so the same text said twice in one process differs slightly; ``speech_timeline_isolated``
therefore speaks each clip's lines in a fresh child process, which makes clips reproducible by seed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Phoneme:
    """One phoneme event: its eSpeak mnemonic and start time in seconds."""

    name: str
    start: float


@dataclass(frozen=True)
class Utterance:
    """Speech and its phoneme timeline."""

    waveform: np.ndarray  # [N] float32 in [-1, 1]
    sample_rate: int
    phonemes: tuple[Phoneme, ...]

    @property
    def seconds(self) -> float:
        """Duration."""
        return len(self.waveform) / self.sample_rate


class EspeakUnavailable(RuntimeError):
    """libespeak-ng is not installed."""


def _locate() -> tuple[str, bytes | None]:
    """The libespeak-ng to load and its data folder (None: the library's built-in default).

    The ``espeakng-loader`` wheel (the ``train``/``test`` extras) ships the library and its data, so
    pip alone sets up speech synthesis; a system library (Debian ``espeak-ng``) is the fallback.
    One source wins everywhere the wheel is installed, so data made on two machines sound alike.
    """
    try:
        import espeakng_loader
    except ImportError:
        name = ctypes.util.find_library("espeak-ng")
        if name is None:
            raise EspeakUnavailable(
                "libespeak-ng not found: pip install espeakng-loader (or pip install -e '.[train]'), "
                "or install the system library (Debian/Ubuntu: apt-get install espeak-ng)"
            ) from None
        return name, None
    data = Path(espeakng_loader.get_data_path())
    # espeak_Initialize takes the folder that holds espeak-ng-data/.
    return espeakng_loader.get_library_path(), str(data.parent).encode()


@functools.cache
def _library() -> tuple[ctypes.CDLL, int]:
    name, data = _locate()
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise EspeakUnavailable(f"libespeak-ng at {name} could not be loaded: {exc}") from None
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 500, data, _INIT_PHONEME_EVENTS)
    if rate <= 0:
        raise EspeakUnavailable(
            f"espeak_Initialize failed ({rate}): its data folder (espeak-ng-data) is missing"
        )
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    return lib, rate


class Speaker:
    """Speaks text with one espeak-ng voice.

    Args:
        voice: an espeak-ng voice name with an optional variant, e.g. ``"en-us+f3"``.
        rate: words per minute (80..450).
        pitch: base pitch 0..100 (50 normal).
        pitch_range: intonation range 0..100.
    """

    def __init__(self, voice: str = "en-us", rate: int = 160, pitch: int = 50, pitch_range: int = 50) -> None:
        self.voice, self.rate, self.pitch, self.pitch_range = voice, rate, pitch, pitch_range
        self._lib, self.sample_rate = _library()
        self._chunks: list[np.ndarray] = []
        self._events: list[Phoneme] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer

    def _collect(
        self, wav: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.POINTER(_Event)
    ) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                name = events[i].id.string.decode("utf-8", errors="replace")
                self._events.append(Phoneme(name, events[i].audio_position / 1000.0))
            i += 1
        return 0

    def say(self, text: str) -> Utterance:
        """Synthesise ``text``; returns the waveform at the library's rate (22050 Hz) and its phonemes."""
        lib = self._lib
        if lib.espeak_SetVoiceByName(self.voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {self.voice!r} (see `espeak-ng --voices`)")
        lib.espeak_SetParameter(_PARAM_RATE, int(self.rate), 0)
        lib.espeak_SetParameter(_PARAM_PITCH, int(self.pitch), 0)
        lib.espeak_SetParameter(_PARAM_RANGE, int(self.pitch_range), 0)
        lib.espeak_SetSynthCallback(self._callback)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        wave = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return Utterance(wave, self.sample_rate, tuple(self._events))


# A small, fixed vocabulary: sentences are random word strings, so train/held-out text is a seed choice.
WORDS = [
    "the",
    "a",
    "one",
    "two",
    "three",
    "some",
    "many",
    "every",
    "this",
    "that",
    "these",
    "those",
    "my",
    "your",
    "our",
    "their",
    "his",
    "her",
    "its",
    "people",
    "time",
    "year",
    "day",
    "way",
    "thing",
    "man",
    "woman",
    "child",
    "world",
    "life",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "name",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "foot",
    "boy",
    "be",
    "have",
    "do",
    "say",
    "go",
    "get",
    "make",
    "know",
    "think",
    "take",
    "see",
    "come",
    "want",
    "look",
    "use",
    "find",
    "give",
    "tell",
    "work",
    "call",
    "try",
    "ask",
    "need",
    "feel",
    "become",
    "leave",
    "put",
    "mean",
    "keep",
    "let",
    "begin",
    "seem",
    "help",
    "talk",
    "turn",
    "start",
    "show",
    "hear",
    "play",
    "run",
    "move",
    "like",
    "live",
    "believe",
    "hold",
    "bring",
    "happen",
    "write",
    "provide",
    "sit",
    "stand",
    "lose",
    "pay",
    "meet",
    "include",
    "continue",
    "set",
    "learn",
    "lead",
    "understand",
    "watch",
    "follow",
    "stop",
    "create",
    "speak",
    "read",
    "allow",
    "add",
    "spend",
    "grow",
    "open",
    "walk",
    "win",
    "offer",
    "remember",
    "love",
    "consider",
    "appear",
    "buy",
    "wait",
    "serve",
    "die",
    "send",
    "expect",
    "build",
    "stay",
    "fall",
    "cut",
    "reach",
    "kill",
    "remain",
    "suggest",
    "raise",
    "pass",
    "sell",
    "require",
    "report",
    "decide",
    "pull",
    "good",
    "new",
    "first",
    "last",
    "long",
    "great",
    "little",
    "own",
    "other",
    "old",
    "big",
    "high",
    "different",
    "small",
    "large",
    "next",
    "early",
    "young",
    "important",
    "few",
    "public",
    "bad",
    "same",
    "able",
    "free",
    "sure",
    "real",
    "best",
    "better",
    "whole",
    "strong",
    "happy",
    "blue",
    "green",
    "bright",
    "quiet",
    "simple",
    "clear",
    "full",
    "warm",
    "cold",
    "easy",
    "hard",
    "fast",
    "slow",
    "open",
    "close",
    "today",
    "tomorrow",
    "really",
    "very",
    "always",
    "never",
    "often",
    "again",
    "still",
    "maybe",
    "perhaps",
    "almost",
    "quite",
    "soon",
    "and",
    "but",
    "or",
    "because",
    "so",
    "if",
    "when",
    "while",
    "although",
    "until",
    "before",
    "after",
    "since",
    "where",
    "then",
    "also",
]

ENGLISH_VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd")
OTHER_VOICES = ("de", "fr", "es", "it", "nl", "pt", "pl", "sv", "cs", "fi", "id", "tr", "vi", "hu")
VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "croak",
    "adam",
    "anika",
    "belinda",
    "john",
    "linda",
    "max",
    "paul",
    "steph",
)
# Held out of training: never heard by the model (evaluation speech).
HELD_OUT_VARIANTS = ("m6", "f4", "klatt3", "belinda", "steph")
HELD_OUT_LANGUAGES = ("en-029", "nl", "hu")


def voice_pool(held_out: bool) -> tuple[list[str], list[str]]:
    """(languages, variants) for training (``held_out=False``) or held-out evaluation speech."""
    languages = [v for v in ENGLISH_VOICES + OTHER_VOICES if (v in HELD_OUT_LANGUAGES) == held_out]
    variants = [v for v in VARIANTS if (v in HELD_OUT_VARIANTS) == held_out]
    return languages, variants


def random_speaker(rng: np.random.Generator, held_out: bool = False) -> Speaker:
    """A voice, speed and pitch drawn from the training or held-out pool (mostly English)."""
    languages, variants = voice_pool(held_out)
    english = [v for v in languages if v.startswith("en")]
    language = str(
        rng.choice(
            english
            if rng.random() < 0.75 or not (set(languages) - set(english))
            else [v for v in languages if v not in english]
        )
    )
    voice = f"{language}+{rng.choice(variants)}"
    return Speaker(
        voice,
        rate=int(rng.integers(120, 220)),
        pitch=int(rng.integers(20, 80)),
        pitch_range=int(rng.integers(20, 90)),
    )


def random_sentence(rng: np.random.Generator, min_words: int = 3, max_words: int = 10) -> str:
    """A random word string ending in a full stop."""
    words = rng.choice(WORDS, size=int(rng.integers(min_words, max_words + 1)))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def speech_timeline(
    seed: int, seconds: float, held_out: bool, silence: float
) -> tuple[str, list[tuple[float, Utterance]]]:
    """Random sentences separated by pauses, filling ``seconds``: ``(voice, [(start_s, utterance), ...])``.

    ``silence`` is the chance of a long pause (0.8-2.5 s) before a sentence. In this process: see
    ``speech_timeline_isolated`` for reproducible speech.
    """
    rng = np.random.default_rng(seed)
    speaker = random_speaker(rng, held_out=held_out)
    lines: list[tuple[float, Utterance]] = []
    t = float(rng.uniform(0.0, 0.6)) if rng.random() < 0.7 else 0.0
    while t < seconds:
        if rng.random() < silence:
            t += float(rng.uniform(0.8, 2.5))
            continue
        utt = speaker.say(random_sentence(rng))
        lines.append((t, utt))
        t += utt.seconds + float(rng.uniform(0.15, 0.8))
    return speaker.voice, lines


def speech_timeline_isolated(
    seed: int, seconds: float, held_out: bool, silence: float
) -> tuple[str, list[tuple[float, Utterance]]]:
    """``speech_timeline`` run in a fresh process (``python -m liveact.train.speech``): reproducible."""
    args = json.dumps({"seed": seed, "seconds": seconds, "held_out": held_out, "silence": silence})
    proc = subprocess.run(
        [sys.executable, "-m", "liveact.train.speech", args], capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"speech synthesis failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    data = np.load(io.BytesIO(proc.stdout), allow_pickle=False)
    meta = json.loads(str(data["meta"]))
    lines = []
    for i, (start, rate, phonemes) in enumerate(meta["lines"]):
        lines.append((start, Utterance(data[f"wave{i}"], rate, tuple(Phoneme(n, t) for n, t in phonemes))))
    return meta["voice"], lines


def _child(argv: list[str]) -> None:
    """Child side of ``speech_timeline_isolated``: writes an npz to stdout."""
    args = json.loads(argv[0])
    voice, lines = speech_timeline(args["seed"], args["seconds"], args["held_out"], args["silence"])
    meta = {
        "voice": voice,
        "lines": [(t, u.sample_rate, [(p.name, p.start) for p in u.phonemes]) for t, u in lines],
    }
    buf = io.BytesIO()
    np.savez(
        buf, meta=np.array(json.dumps(meta)), **{f"wave{i}": u.waveform for i, (_, u) in enumerate(lines)}
    )
    sys.stdout.buffer.write(buf.getvalue())


if __name__ == "__main__":
    _child(sys.argv[1:])
