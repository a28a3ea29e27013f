"""Make the example inputs in ``examples/``: a drawn portrait, two short speech clips and input JSONs.

Everything is made here, so the examples carry no third-party image or voice. The portrait is drawn
with PIL (deterministic). Speech comes from ``espeak-ng`` when it is installed
(``apt-get install espeak-ng``); otherwise a small formant synthesiser of our own voices vowel-like
syllables with the sentences' rhythm, which is enough to drive lip motion in a demo. Clips are 16 kHz
mono 16-bit WAV (the rate the audio encoder uses), each well under 300 KB.

Usage::

    python scripts/make_examples.py [--out examples] [--no-espeak]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger("make_examples")

SAMPLE_RATE = 16000
SIZE = 512
SENTENCES = (
    "Hello! I am a digital human, and I can talk with you in real time.",
    "Give me one photo and a voice, and I will keep on talking for hours.",
)
PROMPT = ("A young person with dark hair talks to the camera with natural lip movements and small head "
          "motions, upper body, plain teal background, soft studio lighting.")
EDIT_PROMPTS = {
    "[1, 2]": "The person smiles broadly while talking to the camera, warm and happy expression.",
    "[3, 4]": "The person nods slowly and raises the eyebrows while speaking, surprised expression.",
}

# (F1, F2, F3) in Hz of a few vowels, averaged adult values; the fallback voice cycles through them.
VOWEL_FORMANTS = {
    "a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010),
    "o": (570, 840, 2410), "u": (300, 870, 2240),
}


# ---------------------------------------------------------------------- portrait

def draw_portrait(size: int = SIZE) -> Image.Image:
    """Draw a stylised head-and-shoulders portrait.

    Drawn at 2x and downsampled, which antialiases PIL's hard-edged shapes.

    Returns:
        RGB image of ``size x size``.
    """
    s = 2 * size
    u = s / 512  # every coordinate below is on a 512 grid

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * u, y0 * u, x1 * u, y1 * u)

    # Vertical background gradient: a plain backdrop, as in most talking-head footage.
    top, bottom = np.array([46, 110, 122], np.float32), np.array([18, 52, 64], np.float32)
    ramp = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp) * np.ones((1, s, 1), np.float32)
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)

    skin, skin_shadow = (232, 186, 150), (206, 154, 120)
    hair = (48, 32, 26)
    shirt, shirt_dark = (64, 84, 160), (44, 60, 122)

    # Shoulders and torso, then the neck over them.
    d.ellipse(box(56, 380, 456, 640), fill=shirt)
    d.polygon([(200 * u, 392 * u), (256 * u, 452 * u), (312 * u, 392 * u)], fill=shirt_dark)
    d.rectangle(box(220, 300, 292, 410), fill=skin_shadow)
    d.ellipse(box(220, 380, 292, 430), fill=skin_shadow)

    # Hair behind the head, ears, face.
    d.ellipse(box(140, 70, 372, 330), fill=hair)
    d.rectangle(box(140, 190, 372, 330), fill=hair)
    d.ellipse(box(150, 200, 182, 262), fill=skin_shadow)
    d.ellipse(box(330, 200, 362, 262), fill=skin_shadow)
    d.ellipse(box(166, 110, 346, 350), fill=skin)
    # Fringe: a chord of the hair ellipse over the forehead.
    d.chord(box(156, 84, 356, 220), start=180, end=360, fill=hair)
    d.pieslice(box(200, 120, 330, 200), start=200, end=320, fill=hair)

    # Eyebrows, eyes (white, iris, pupil, highlight).
    for cx in (216, 296):
        d.arc(box(cx - 26, 188, cx + 26, 214), start=200, end=340, fill=hair, width=int(6 * u))
        d.ellipse(box(cx - 20, 214, cx + 20, 238), fill=(250, 250, 250))
        d.ellipse(box(cx - 10, 215, cx + 10, 237), fill=(84, 58, 40))
        d.ellipse(box(cx - 5, 221, cx + 5, 231), fill=(12, 10, 10))
        d.ellipse(box(cx + 2, 219, cx + 6, 223), fill=(255, 255, 255))
        d.arc(box(cx - 21, 212, cx + 21, 240), start=190, end=350, fill=(60, 40, 32), width=int(3 * u))

    # Nose: a soft shadow line and nostrils.
    d.line([(258 * u, 236 * u), (250 * u, 280 * u), (262 * u, 286 * u)], fill=skin_shadow, width=int(4 * u))
    d.ellipse(box(244, 282, 252, 288), fill=(170, 120, 96))
    d.ellipse(box(262, 282, 270, 288), fill=(170, 120, 96))

    # Mouth, slightly open: lips, dark interior, teeth line.
    d.ellipse(box(226, 304, 290, 332), fill=(184, 92, 96))
    d.ellipse(box(236, 312, 280, 326), fill=(92, 30, 36))
    d.rectangle(box(240, 312, 276, 316), fill=(240, 236, 230))
    # Cheeks.
    for cx in (204, 308):
        d.ellipse(box(cx - 18, 268, cx + 18, 290), fill=(236, 168, 148))

    img = img.filter(ImageFilter.GaussianBlur(radius=0.8 * u))
    return img.resize((size, size), Image.LANCZOS)


# ---------------------------------------------------------------------- speech

def espeak_available() -> bool:
    """Whether the ``espeak-ng`` binary is on PATH."""
    return shutil.which("espeak-ng") is not None


def synth_espeak(text: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``text`` with espeak-ng (en-us, 150 wpm) and resample with ffmpeg.

    Returns:
        ``[N]`` float32 mono samples at ``sample_rate``.
    """
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-p", "45", "-w", str(raw), text],
                       check=True, capture_output=True)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                        "-i", str(raw), "-ac", "1", "-ar", str(sample_rate), str(out)],
                       check=True, capture_output=True)
        audio, _ = sf.read(out, dtype="float32")
    return audio


def synth_formant(text: str, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A vowel-syllable voice with the text's rhythm: one syllable per vowel group, pauses at spaces.

    Each syllable is a harmonic series on a falling pitch contour, shaped by three formant
    resonances of the vowel, with a noise burst in front (a consonant) and a smooth envelope.

    Returns:
        ``[N]`` float32 mono samples at ``sample_rate``.
    """
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    syl_s, gap_s = 0.16, 0.06
    words = text.lower().replace(",", " ,").replace(".", " .").replace("!", " .").split()
    n_syll = sum(max(1, sum(ch in "aeiouy" for ch in w)) for w in words)
    k = 0
    for word in words:
        if word in {",", "."}:
            pieces.append(np.zeros(int((0.25 if word == "," else 0.45) * sample_rate), np.float32))
            continue
        vowels = [ch for ch in word if ch in VOWEL_FORMANTS] or ["e"]
        for vowel in vowels:
            n = int(syl_s * sample_rate)
            t = np.arange(n) / sample_rate
            # Declining pitch over the sentence with a small rise-fall per syllable.
            f0 = 150 - 30 * k / max(1, n_syll) + 12 * np.sin(np.pi * t / syl_s)
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            formants = VOWEL_FORMANTS[vowel]
            voice = np.zeros(n)
            for h in range(1, int(4000 / f0.max())):
                freq = h * f0
                amp = sum(g / (1 + ((freq - f) / bw) ** 2)
                          for f, bw, g in zip(formants, (80, 100, 140), (1.0, 0.6, 0.25)))
                voice += amp * np.sin(h * phase) / h**0.5
            env = np.sin(np.pi * np.clip(t / syl_s, 0, 1)) ** 0.6
            burst = rng.standard_normal(int(0.03 * sample_rate)) * np.hanning(int(0.03 * sample_rate)) * 0.15
            pieces += [burst.astype(np.float32), (voice * env).astype(np.float32)]
            k += 1
        pieces.append(np.zeros(int(gap_s * sample_rate), np.float32))
    audio = np.concatenate(pieces)
    return audio / (np.abs(audio).max() + 1e-9) * 0.8


def write_speech(path: Path, text: str, use_espeak: bool) -> float:
    """Synthesise ``text`` and write 16 kHz mono 16-bit WAV with 0.2 s of silence at both ends.

    Returns:
        The duration in seconds.
    """
    audio = synth_espeak(text) if use_espeak else synth_formant(text)
    audio = audio / (np.abs(audio).max() + 1e-9) * 0.8
    pad = np.zeros(int(0.2 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([pad, audio.astype(np.float32), pad])
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return len(audio) / SAMPLE_RATE


# ---------------------------------------------------------------------- main

def make_examples(out: Path, use_espeak: bool | None = None) -> None:
    """Write ``portrait.png``, ``speech_1.wav``, ``speech_2.wav``, ``example.json`` and
    ``example_edit.json`` into ``out``; JSON paths are relative to the JSON's folder."""
    out.mkdir(parents=True, exist_ok=True)
    draw_portrait().save(out / "portrait.png", optimize=True)
    if use_espeak is None:
        use_espeak = espeak_available()
    logger.info("speech from %s", "espeak-ng" if use_espeak else "the built-in formant synthesiser")
    for i, text in enumerate(SENTENCES, start=1):
        seconds = write_speech(out / f"speech_{i}.wav", text, use_espeak)
        logger.info("speech_%d.wav: %.2f s, %d bytes", i, seconds, (out / f"speech_{i}.wav").stat().st_size)
    job = {"prompt": PROMPT, "cond_image": "portrait.png", "cond_audio": "speech_1.wav"}
    (out / "example.json").write_text(json.dumps([job], indent=4) + "\n")
    edit_job = {"prompt": PROMPT, "cond_image": "portrait.png", "cond_audio": "speech_2.wav",
                "edit_prompt": EDIT_PROMPTS}
    (out / "example_edit.json").write_text(json.dumps([edit_job], indent=4) + "\n")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "examples")
    parser.add_argument("--no-espeak", action="store_true", help="use the built-in formant voice")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_examples(args.out, use_espeak=False if args.no_espeak else None)


if __name__ == "__main__":
    main()
