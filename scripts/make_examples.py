"""Make the example inputs in ``examples/``: avatars of LiveAct-Nano's family, unheard speech, input JSONs.

The avatars are drawn by the training renderer (``liveact.train.synth``) from seeds training never
used, with a neutral face; the speech is espeak-ng with held-out voices and random sentences
(``liveact.train.speech``), with pauses, so the examples show lip-sync and a closed mouth in silence.
Everything is generated here: no third-party image or voice. Needs espeak-ng
(``apt-get install espeak-ng``).

    python scripts/make_examples.py [--out examples]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from liveact.train.synth import SAMPLE_RATE, FaceState, _speech_track, render_frame, sample_avatar

logger = logging.getLogger("make_examples")

# Far from the training seeds (clips start at 1,000,000; validation at 50,000,000). Chosen among
# 987_654_300-987_654_599 for colours the shipped autoencoder reproduces (round-trip PSNR 26.4 and
# 25.1 dB at 128x128; its latent keeps little green, see liveact/assets/nano/README.md) and for
# variety: a hat and long hair on blue; glasses and a bun on orange.
AVATAR_SEEDS = (987_654_323, 987_654_407)
SPEECH = ((424_242, 9.0), (434_343, 12.0))  # (seed, seconds): held-out voices and sentences
MAIN = "A person talks to the camera."
EDITS = {
    "[1, 2]": "The person smiles broadly.",
    "[3, 4]": "The person nods slowly.",
    "[5, 6]": "The person raises their eyebrows.",
    "[7, 8]": "The person looks surprised.",
}


def portrait(seed: int, size: int = 256) -> Image.Image:
    """A neutral, front-facing avatar of the training family."""
    return Image.fromarray(render_frame(sample_avatar(np.random.default_rng(seed)), FaceState(), size))


def speech(seed: int, seconds: float) -> np.ndarray:
    """``[N]`` 16 kHz speech with pauses from held-out voices."""
    wave, _, voice = _speech_track(seed, seconds, held_out=True, silence=0.2)
    logger.info("speech %d: %.1f s, voice %s", seed, seconds, voice)
    return wave / max(1e-6, float(np.abs(wave).max())) * 0.8


def main(argv: list[str] | None = None) -> None:
    """Write the example files."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "examples")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(AVATAR_SEEDS, 1):
        portrait(seed).save(a.out / f"avatar_{i}.png")
    for i, (seed, seconds) in enumerate(SPEECH, 1):
        sf.write(a.out / f"speech_{i}.wav", speech(seed, seconds), SAMPLE_RATE, subtype="PCM_16")
    jobs = [
        {"prompt": MAIN, "cond_image": "avatar_1.png", "cond_audio": "speech_1.wav"},
        {"prompt": MAIN, "cond_image": "avatar_2.png", "cond_audio": "speech_2.wav"},
    ]
    (a.out / "example.json").write_text(json.dumps(jobs, indent=4) + "\n")
    edit = [
        {"prompt": MAIN, "cond_image": "avatar_1.png", "cond_audio": "speech_2.wav", "edit_prompt": EDITS}
    ]
    (a.out / "example_edit.json").write_text(json.dumps(edit, indent=4) + "\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
