"""Procedural talking avatars: LiveAct-Nano's training data, with ground truth kept for evaluation.

``make_clip(seed, num_blocks)`` draws a person (face shape, skin, hair, eyes, accessories that must
persist: glasses, earrings, hat, shirt pattern), speech from espeak-ng with pauses, and renders every
video frame: the mouth follows the phoneme timeline (visemes) and the loudness, and is closed in
silence; the head sways and bobs, the eyes blink; timed actions (smile, nod, raised eyebrows, closed
eyes, surprise, head shake) switch on per block and are described in text, which is the training
signal for timed edit prompts. Everything is deterministic by seed.

The ground truth (mouth opening per frame, action per block, blink per frame) is kept with the clip
so metrics can compare what the model drew with what the speech asked for.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from liveact.components.audio import Resampler
from liveact.train.speech import Phoneme, Utterance, speech_timeline_isolated

FPS = 25.0
SAMPLE_RATE = 16000
SUPERSAMPLE = 2  # draw at 2x and downsample: antialiased edges for the autoencoder

ACTIONS: dict[str, tuple[str, ...]] = {
    "smile": (
        "The person smiles broadly.",
        "A big happy smile while talking.",
        "Smiling warmly.",
        "The person is grinning.",
    ),
    "nod": (
        "The person nods slowly.",
        "Nodding the head up and down.",
        "The person nods in agreement.",
        "A gentle nod.",
    ),
    "raise_brows": (
        "The person raises their eyebrows.",
        "Eyebrows lifted high.",
        "The person lifts both eyebrows.",
        "Raised eyebrows.",
    ),
    "close_eyes": (
        "The person closes their eyes.",
        "Eyes shut while speaking.",
        "With closed eyes.",
        "The person keeps the eyes closed.",
    ),
    "surprised": (
        "The person looks surprised.",
        "A shocked, surprised face.",
        "Wide eyes, astonished.",
        "The person is amazed.",
    ),
    "shake": (
        "The person shakes their head.",
        "Shaking the head side to side.",
        "The person shakes no.",
        "A head shake.",
    ),
}
# Face state a reader can regress from one frame: how the timed actions show. ``dx``/``dy`` are head
# offsets (fractions of the frame); nods and shakes show as their motion over time.
MOTION = ("smile", "brows", "eye_wide", "dx", "dy")
MOUTH_Y = 0.42  # the mouth's centre line below the face centre, in face half-heights
# Where the mouth can be drawn around its centre (x0, x1, y0, y1, fractions of the frame): the widest
# mouth (smiling) and the lowest jaw (wide open, surprised). Training weights these pixels/cells.
MOUTH_BOX = (-0.15, 0.15, -0.05, 0.11)
MAIN_PROMPTS = (
    "A person talks to the camera.",
    "Someone is speaking calmly.",
    "A character talks.",
    "The person speaks to the viewer.",
    "A talking head.",
    "A person is talking naturally.",
    "Someone tells a story.",
    "A cartoon person speaks.",
)


# ------------------------------------------------------------------------------------------------
# Visemes: how open and how rounded the mouth is for each eSpeak phoneme.


def viseme(name: str) -> tuple[float, float]:
    """``(opening, rounding)`` in [0, 1] for an eSpeak phoneme mnemonic (``_`` is a pause)."""
    if not name or name.startswith("_"):
        return 0.0, 0.0
    head = name.rstrip(":;")
    if not head:
        return 0.0, 0.0
    if head[0] in "pbm":
        return 0.0, 0.2  # lips pressed together
    if head[0] in "fv":
        return 0.12, 0.0  # lower lip to the teeth
    if head[0] in "wuUoO0" or head in ("aU", "oU"):
        return (0.7 if head[0] in "oO0a" else 0.45), 1.0
    if head[0] in "aAV" or head in ("aI",):
        return 1.0, 0.0
    if head[0] in "eE3@":
        return 0.65, 0.0
    if head[0] in "iIj":
        return 0.35, 0.0
    return 0.25, 0.1  # other consonants: t d n l s z r k g h ...


def mouth_track(
    utterance: Utterance | None,
    speech_offset: float,
    wave: np.ndarray,
    num_frames: int,
    fps: float = FPS,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(opening, rounding)`` from the phoneme timeline, gated by loudness.

    Args:
        utterance: the phonemes of all speech in the clip (times relative to ``speech_offset``).
        wave: ``[N]`` the clip's audio at ``sample_rate``: loudness closes the mouth in silence.
    """
    times = (np.arange(num_frames) + 0.5) / fps
    opening = np.zeros(num_frames, np.float32)
    rounding = np.zeros(num_frames, np.float32)
    if utterance is not None and utterance.phonemes:
        starts = np.array([p.start + speech_offset for p in utterance.phonemes])
        shapes = np.array([viseme(p.name) for p in utterance.phonemes], np.float32)
        idx = np.searchsorted(starts, times, side="right") - 1
        valid = idx >= 0
        opening[valid], rounding[valid] = shapes[idx[valid], 0], shapes[idx[valid], 1]
    # Loudness gate: RMS over each frame, relative to the clip's speech level.
    rms = frame_rms(wave, num_frames, fps, sample_rate)
    level = np.percentile(rms[rms > 1e-4], 90) if np.any(rms > 1e-4) else 1.0
    gate = np.clip(rms / (0.5 * level), 0.0, 1.0)
    gate[rms < 0.02 * level] = 0.0
    opening = opening * gate
    # Coarticulation: lips move smoothly (a 3-frame kernel), never opening in silence.
    kernel = np.array([0.25, 0.5, 0.25], np.float32)
    opening = np.convolve(np.pad(opening, 1, mode="edge"), kernel, mode="valid") * (gate > 0)
    rounding = np.convolve(np.pad(rounding, 1, mode="edge"), kernel, mode="valid")
    return opening.astype(np.float32), rounding.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Appearance


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


SKIN = (
    (255, 224, 196),
    (241, 194, 160),
    (224, 172, 130),
    (198, 134, 96),
    (160, 102, 66),
    (112, 72, 46),
    (255, 205, 180),
    (230, 185, 140),
)
HAIR = (
    (30, 25, 20),
    (70, 45, 25),
    (120, 80, 40),
    (200, 160, 90),
    (230, 210, 150),
    (160, 50, 30),
    (90, 90, 95),
    (230, 230, 230),
    (40, 60, 140),
    (150, 40, 120),
)
EYES = ((60, 40, 20), (40, 90, 160), (60, 130, 70), (100, 100, 110), (20, 20, 20))


@dataclass(frozen=True)
class Avatar:
    """One person's appearance; every field is fixed for the whole clip."""

    background: tuple[int, int, int]
    background2: tuple[int, int, int]
    background_style: int  # 0 flat, 1 vertical gradient, 2 two-tone wall
    skin: tuple[int, int, int]
    face_w: float  # face half-width, fraction of the frame
    face_h: float  # face half-height
    chin: float  # 0 round .. 1 pointed
    hair: tuple[int, int, int]
    hair_style: int  # 0 bald, 1 short cap, 2 long, 3 bun, 4 fringe
    eye_color: tuple[int, int, int]
    eye_gap: float
    eye_size: float
    brow_thickness: float
    lip: tuple[int, int, int]
    mouth_w: float
    nose: int  # 0 line, 1 triangle, 2 dot
    shirt: tuple[int, int, int]
    shirt2: tuple[int, int, int]
    shirt_pattern: int  # 0 solid, 1 stripes, 2 dots, 3 two-tone
    glasses: int  # 0 none, 1 round, 2 square
    glasses_color: tuple[int, int, int]
    earrings: int  # 0 none, 1 studs, 2 hoops
    earring_color: tuple[int, int, int]
    hat: int  # 0 none, 1 beanie, 2 brimmed
    hat_color: tuple[int, int, int]
    blush: bool
    center_y: float

    @property
    def accessories(self) -> dict[str, int]:
        """Accessories that must persist for the whole video (0 = absent)."""
        return {"glasses": self.glasses, "earrings": self.earrings, "hat": self.hat}


def sample_avatar(rng: np.random.Generator) -> Avatar:
    """A random person: colours with jitter around natural palettes, random shapes and accessories."""

    def jitter(c: tuple[int, int, int], amount: int = 18) -> tuple[int, int, int]:
        return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)

    skin = jitter(SKIN[rng.integers(len(SKIN))])
    lip = tuple(
        int(v)
        for v in np.clip(np.array(skin) * np.array([0.85, 0.55, 0.55]) + rng.integers(-15, 15, 3), 0, 255)
    )
    return Avatar(
        background=_color(rng, 40, 230),
        background2=_color(rng, 40, 230),
        background_style=int(rng.integers(3)),
        skin=skin,
        face_w=float(rng.uniform(0.22, 0.29)),
        face_h=float(rng.uniform(0.29, 0.35)),
        chin=float(rng.uniform(0, 1)),
        hair=jitter(HAIR[rng.integers(len(HAIR))], 10),
        hair_style=int(rng.integers(5)),
        eye_color=jitter(EYES[rng.integers(len(EYES))], 10),
        eye_gap=float(rng.uniform(0.09, 0.12)),
        eye_size=float(rng.uniform(0.028, 0.042)),
        brow_thickness=float(rng.uniform(0.012, 0.026)),
        lip=lip,
        mouth_w=float(rng.uniform(0.075, 0.105)),
        nose=int(rng.integers(3)),
        shirt=_color(rng, 20, 240),
        shirt2=_color(rng, 20, 240),
        shirt_pattern=int(rng.integers(4)),
        glasses=int(rng.choice(3, p=[0.55, 0.25, 0.2])),
        glasses_color=_color(rng, 0, 120),
        earrings=int(rng.choice(3, p=[0.6, 0.2, 0.2])),
        earring_color=jitter((220, 190, 60), 40),
        hat=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        hat_color=_color(rng, 20, 230),
        blush=bool(rng.random() < 0.3),
        center_y=float(rng.uniform(0.44, 0.50)),
    )


# ------------------------------------------------------------------------------------------------
# One frame


@dataclass
class FaceState:
    """Everything that moves: head offset (fractions of the frame), mouth, eyes, brows, smile."""

    dx: float = 0.0
    dy: float = 0.0
    opening: float = 0.0
    rounding: float = 0.0
    smile: float = 0.0
    eyes_open: float = 1.0
    brows: float = 0.0  # raise, 0..1
    eye_wide: float = 0.0


def mouth_centre(avatar: Avatar, state: FaceState) -> tuple[float, float]:
    """Where ``render_frame`` draws the mouth's centre: (x, y) in fractions of the frame."""
    return 0.5 + state.dx, avatar.center_y + state.dy + avatar.face_h * MOUTH_Y


def render_frame(avatar: Avatar, state: FaceState, size: int = 128) -> np.ndarray:
    """Draw one frame: ``[size, size, 3]`` uint8."""
    s = size * SUPERSAMPLE
    img = Image.new("RGB", (s, s), avatar.background)
    d = ImageDraw.Draw(img)
    if avatar.background_style == 1:
        for y in range(0, s, 4):
            a = y / s
            c = tuple(int(avatar.background[i] * (1 - a) + avatar.background2[i] * a) for i in range(3))
            d.rectangle([0, y, s, y + 4], fill=c)
    elif avatar.background_style == 2:
        d.rectangle([0, int(0.62 * s), s, s], fill=avatar.background2)

    cx, cy = (0.5 + state.dx) * s, (avatar.center_y + state.dy) * s
    fw, fh = avatar.face_w * s, avatar.face_h * s

    def box(x: float, y: float, rx: float, ry: float) -> list[float]:
        return [x - rx, y - ry, x + rx, y + ry]

    # Shoulders and shirt (they move less than the head).
    sx = 0.5 * s + state.dx * s * 0.4
    shoulder_top = cy + fh * 1.05
    d.ellipse([sx - 0.46 * s, shoulder_top, sx + 0.46 * s, shoulder_top + 0.9 * s], fill=avatar.shirt)
    if avatar.shirt_pattern == 1:
        for k in range(8):
            y = shoulder_top + 0.05 * s + k * 0.045 * s
            d.line([sx - 0.45 * s, y, sx + 0.45 * s, y], fill=avatar.shirt2, width=max(2, s // 90))
    elif avatar.shirt_pattern == 2:
        for k in range(-4, 5):
            for j in range(4):
                px, py = sx + k * 0.09 * s, shoulder_top + 0.07 * s + j * 0.07 * s
                d.ellipse(box(px, py, 0.012 * s, 0.012 * s), fill=avatar.shirt2)
    elif avatar.shirt_pattern == 3:
        d.pieslice(
            [sx - 0.46 * s, shoulder_top, sx + 0.46 * s, shoulder_top + 0.9 * s], 270, 360, fill=avatar.shirt2
        )
    # Neck and a collar that reveals the skin.
    neck_w = fw * 0.42
    d.rectangle(
        [cx - neck_w, cy + fh * 0.6, cx + neck_w, shoulder_top + 0.04 * s],
        fill=tuple(int(v * 0.88) for v in avatar.skin),
    )
    d.polygon(
        [
            (cx - neck_w * 1.3, shoulder_top + 0.01 * s),
            (cx + neck_w * 1.3, shoulder_top + 0.01 * s),
            (cx, shoulder_top + 0.09 * s),
        ],
        fill=tuple(int(v * 0.88) for v in avatar.skin),
    )

    if avatar.hair_style == 2:  # long hair behind the head
        d.rounded_rectangle(
            [cx - fw * 1.2, cy - fh * 1.05, cx + fw * 1.2, cy + fh * 1.25],
            radius=int(fw * 0.5),
            fill=avatar.hair,
        )
    if avatar.hair_style == 3:  # bun
        d.ellipse(box(cx, cy - fh * 1.12, fw * 0.42, fh * 0.3), fill=avatar.hair)

    # Ears and earrings.
    for side in (-1, 1):
        ex = cx + side * fw * 0.98
        d.ellipse(box(ex, cy, fw * 0.16, fh * 0.2), fill=avatar.skin)
        if avatar.earrings == 1:
            d.ellipse(box(ex, cy + fh * 0.2, 0.012 * s, 0.012 * s), fill=avatar.earring_color)
        elif avatar.earrings == 2:
            d.ellipse(
                box(ex, cy + fh * 0.3, 0.028 * s, 0.034 * s),
                outline=avatar.earring_color,
                width=max(2, s // 80),
            )

    # Face: an ellipse plus a chin polygon (pointed chins).
    d.ellipse(box(cx, cy, fw, fh), fill=avatar.skin)
    if avatar.chin > 0.5:
        d.polygon(
            [
                (cx - fw * 0.7, cy + fh * 0.6),
                (cx + fw * 0.7, cy + fh * 0.6),
                (cx, cy + fh * (1.0 + 0.12 * (avatar.chin - 0.5))),
            ],
            fill=avatar.skin,
        )

    # Hair on top.
    if avatar.hair_style in (1, 2, 3):
        d.chord(box(cx, cy - fh * 0.36, fw * 1.04, fh * 0.72), 180, 360, fill=avatar.hair)
    elif avatar.hair_style == 4:
        d.chord(box(cx, cy - fh * 0.4, fw * 1.02, fh * 0.66), 180, 360, fill=avatar.hair)
        d.rectangle([cx - fw * 0.8, cy - fh * 0.58, cx + fw * 0.4, cy - fh * 0.44], fill=avatar.hair)
    # Hat.
    if avatar.hat == 1:
        d.chord(box(cx, cy - fh * 0.2, fw * 1.08, fh * 1.0), 180, 360, fill=avatar.hat_color)
        d.rectangle(
            [cx - fw * 1.08, cy - fh * 0.32, cx + fw * 1.08, cy - fh * 0.2],
            fill=tuple(int(v * 0.8) for v in avatar.hat_color),
        )
    elif avatar.hat == 2:
        d.rectangle([cx - fw * 1.45, cy - fh * 0.62, cx + fw * 1.45, cy - fh * 0.5], fill=avatar.hat_color)
        d.rounded_rectangle(
            [cx - fw * 0.85, cy - fh * 1.35, cx + fw * 0.85, cy - fh * 0.55],
            radius=int(fw * 0.2),
            fill=avatar.hat_color,
        )

    # Eyes.
    eye_y = cy - fh * 0.12
    er = avatar.eye_size * s * (1 + 0.35 * state.eye_wide)
    for side in (-1, 1):
        ex = cx + side * avatar.eye_gap * s
        openness = max(0.0, min(1.0, state.eyes_open))
        if openness < 0.2:
            d.line([ex - er, eye_y, ex + er, eye_y], fill=(40, 30, 30), width=max(2, s // 100))
        else:
            d.ellipse(box(ex, eye_y, er, er * 0.75 * openness), fill=(250, 250, 250))
            ir = er * 0.55
            d.ellipse(box(ex, eye_y, ir, min(ir, er * 0.75 * openness)), fill=avatar.eye_color)
            d.ellipse(box(ex, eye_y, ir * 0.45, min(ir * 0.45, er * 0.5 * openness)), fill=(10, 10, 10))
        # Eyebrows: raised by the action, thickness per person.
        by = eye_y - er * 1.5 - state.brows * er * 1.1
        bw = avatar.brow_thickness * s
        d.line(
            [ex - er * 1.1, by + er * 0.15, ex + er * 1.1, by],
            fill=tuple(int(v * 0.6) for v in avatar.hair),
            width=max(2, int(bw)),
        )

    # Glasses over the eyes.
    if avatar.glasses:
        gw = max(2, s // 70)
        for side in (-1, 1):
            ex = cx + side * avatar.eye_gap * s
            rect = box(ex, eye_y, er * 1.6, er * 1.3)
            if avatar.glasses == 1:
                d.ellipse(rect, outline=avatar.glasses_color, width=gw)
            else:
                d.rectangle(rect, outline=avatar.glasses_color, width=gw)
        d.line(
            [cx - avatar.eye_gap * s + er * 1.6, eye_y, cx + avatar.eye_gap * s - er * 1.6, eye_y],
            fill=avatar.glasses_color,
            width=gw,
        )

    # Nose.
    ny = cy + fh * 0.12
    nose_c = tuple(int(v * 0.75) for v in avatar.skin)
    if avatar.nose == 0:
        d.line([cx, ny - fh * 0.16, cx - fw * 0.06, ny], fill=nose_c, width=max(2, s // 110))
    elif avatar.nose == 1:
        d.polygon([(cx, ny - fh * 0.14), (cx - fw * 0.08, ny), (cx + fw * 0.08, ny)], fill=nose_c)
    else:
        d.ellipse(box(cx, ny, fw * 0.06, fh * 0.04), fill=nose_c)

    # Blush when smiling (or always for some people).
    if avatar.blush or state.smile > 0.5:
        for side in (-1, 1):
            d.ellipse(
                box(cx + side * fw * 0.55, cy + fh * 0.2, fw * 0.14, fh * 0.07),
                fill=tuple(int(min(255, v * 1.0 + a)) for v, a in zip(avatar.skin, (25, -20, -20))),
            )

    # Mouth: width from the person, rounding (narrower) and smile (wider); height from the opening.
    my = mouth_centre(avatar, state)[1] * s
    mw = avatar.mouth_w * s * (1 - 0.35 * state.rounding) * (1 + 0.35 * state.smile)
    mh = 0.065 * s * state.opening * (1 + 0.4 * state.eye_wide)
    lip_w = max(2, s // 90)
    if mh < 0.006 * s:
        if state.smile > 0.2:
            d.arc(
                [cx - mw, my - mw * 0.5, cx + mw, my + mw * 0.5 * state.smile],
                10,
                170,
                fill=avatar.lip,
                width=lip_w + 1,
            )
        else:
            d.line([cx - mw, my, cx + mw, my], fill=avatar.lip, width=lip_w + 1)
    else:
        top = my - mh * (0.35 if state.smile < 0.2 else 0.15)
        rect = [cx - mw, top, cx + mw, my + mh]
        d.ellipse(rect, fill=(70, 20, 25), outline=avatar.lip, width=lip_w)
        if state.opening > 0.3:  # upper teeth
            tw, th = mw * 0.7, mh * 0.28
            d.chord([cx - tw, top + lip_w * 0.5, cx + tw, top + th * 2.2], 180, 360, fill=(245, 245, 240))

    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# A clip


def block_frames(num_blocks: int, first: int = 21, later: int = 32) -> list[int]:
    """Video frames of each block (first block 21, later ones 32 with the default layout)."""
    return [first] + [later] * (num_blocks - 1)


@dataclass
class Clip:
    """A rendered clip with its ground truth.

    ``frames`` ``[F, H, W, 3]`` uint8; ``audio`` ``[N]`` float32 at ``sample_rate``; ``mouth`` ``[F]``
    opening in [0, 1]; ``blink`` ``[F]`` eyes-closed flags; ``block_actions`` the action of each block
    ("" = none); ``prompts`` the text of each block (the action's description, else the main prompt);
    ``motion`` ``[F, len(MOTION)]`` the drawn face state per frame (see ``MOTION``), the ground truth
    of the timed actions; ``mouth_xy`` ``[F, 2]`` the mouth's centre (x, y) in fractions of the frame
    (where the lip-sync evidence is: training can weight it).
    """

    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    fps: float
    mouth: np.ndarray
    blink: np.ndarray
    speaking: np.ndarray
    block_actions: list[str]
    prompts: list[str]
    main_prompt: str
    avatar: Avatar
    voice: str
    motion: np.ndarray = field(default_factory=lambda: np.zeros((0, len(MOTION)), np.float32))
    mouth_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    extra: dict = field(default_factory=dict)


@functools.cache
def _resampler(rate: int) -> Resampler:
    return Resampler(rate, SAMPLE_RATE)


def _speech_track(
    seed: int, seconds: float, held_out: bool, silence: float
) -> tuple[np.ndarray, list[Phoneme], str]:
    """Speech filling ``seconds`` at 16 kHz (sentences and pauses), its phonemes and the voice."""
    voice, lines = speech_timeline_isolated(seed, seconds, held_out, silence)
    total = int(seconds * SAMPLE_RATE)
    wave = np.zeros(total, np.float32)
    phonemes: list[Phoneme] = []
    for t, utt in lines:
        audio = _resampler(utt.sample_rate)(torch.from_numpy(utt.waveform)).numpy()
        start = int(t * SAMPLE_RATE)
        n = min(len(audio), total - start)
        if n <= 0:
            break
        wave[start : start + n] = audio[:n]
        phonemes += [Phoneme(p.name, p.start + t) for p in utt.phonemes if p.start + t < seconds]
    # Recording level varies: the model must not care.
    gain = float(10 ** (np.random.default_rng(seed).uniform(-12, 3) / 20))
    return np.clip(wave * gain, -1, 1), phonemes, voice


def make_clip(
    seed: int,
    num_blocks: int = 3,
    size: int = 128,
    fps: float = FPS,
    held_out: bool = False,
    action_prob: float = 0.5,
    silence: float = 0.15,
    actions: list[str] | None = None,
    avatar: Avatar | None = None,
    audio: np.ndarray | None = None,
) -> Clip:
    """Render a clip of ``num_blocks`` blocks.

    Args:
        seed: everything (person, speech, motion, actions) is drawn from it.
        held_out: use held-out voices (speech the model never heard in training).
        action_prob: chance that a later block carries an action.
        silence: chance of a long pause between sentences.
        actions: force the action of each block ("" = none) instead of drawing them.
        avatar: force the person (e.g. to render one person for a long evaluation run).
        audio: ``[N]`` 16 kHz speech to use instead of drawing new speech (no phoneme timeline: the
            mouth then follows loudness only).
    """
    rng = np.random.default_rng(seed)
    person = avatar or sample_avatar(rng)
    counts = block_frames(num_blocks)
    num_frames = sum(counts)
    seconds = num_frames / fps
    if audio is None:
        wave, phonemes, voice = _speech_track(int(rng.integers(2**31)), seconds, held_out, silence)
    else:
        wave = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
        wave[: min(len(audio), len(wave))] = audio[: len(wave)]
        phonemes, voice = [], "given"
    if phonemes:
        opening, rounding = mouth_track(
            Utterance(wave, SAMPLE_RATE, tuple(phonemes)), 0.0, wave, num_frames, fps
        )
    else:
        opening, rounding = _loudness_opening(wave, num_frames, fps), np.zeros(num_frames, np.float32)
    speaking = opening > 0.05

    if actions is None:
        names = list(ACTIONS)
        actions = [""] + [
            str(rng.choice(names)) if rng.random() < action_prob else "" for _ in range(num_blocks - 1)
        ]
    main = str(rng.choice(MAIN_PROMPTS))
    prompts = [str(rng.choice(ACTIONS[a])) if a else main for a in actions]
    action_of_frame = np.repeat(np.array(actions, dtype=object), counts)

    # Motion: idle sway, speech bob, blinks, and the actions (ramped in/out over a few frames).
    t = np.arange(num_frames) / fps
    phase = rng.uniform(0, 2 * math.pi, size=4)
    sway = 0.012 * np.sin(2 * math.pi * rng.uniform(0.15, 0.35) * t + phase[0])
    bob = 0.008 * np.sin(2 * math.pi * rng.uniform(0.2, 0.4) * t + phase[1])
    blink = np.zeros(num_frames, bool)
    nxt = rng.uniform(0.5, 3.0)
    while nxt < seconds:
        b = int(nxt * fps)
        blink[b : b + 3] = True
        nxt += rng.uniform(2.0, 5.0)

    def ramp(name: str) -> np.ndarray:
        on = (action_of_frame == name).astype(np.float32)
        kernel = np.ones(5, np.float32) / 5
        return np.convolve(np.pad(on, 2, mode="edge"), kernel, mode="valid")

    smile, nod, brows, closed, surprised, shake = (
        ramp(a) for a in ("smile", "nod", "raise_brows", "close_eyes", "surprised", "shake")
    )
    nod_y = 0.035 * nod * np.sin(2 * math.pi * 1.3 * t + phase[2])
    shake_x = 0.04 * shake * np.sin(2 * math.pi * 1.8 * t + phase[3])
    talk_bob = 0.006 * np.convolve(opening, np.ones(5) / 5, mode="same")

    frames = np.empty((num_frames, size, size, 3), np.uint8)
    drawn = np.empty(num_frames, np.float32)
    motion = np.empty((num_frames, len(MOTION)), np.float32)
    mouth_xy = np.empty((num_frames, 2), np.float32)
    for f in range(num_frames):
        eyes = 0.0 if blink[f] else 1.0
        eyes = eyes * (1 - closed[f])
        state = FaceState(
            dx=float(sway[f] + shake_x[f]),
            dy=float(bob[f] + nod_y[f] + talk_bob[f]),
            opening=float(np.clip(opening[f] + 0.35 * surprised[f] * (opening[f] > 0.05), 0, 1)),
            rounding=float(rounding[f] + 0.5 * surprised[f]),
            smile=float(smile[f]),
            eyes_open=float(eyes),
            brows=float(max(brows[f], surprised[f])),
            eye_wide=float(surprised[f]),
        )
        drawn[f] = state.opening
        motion[f] = [getattr(state, name) for name in MOTION]
        mouth_xy[f] = mouth_centre(person, state)
        frames[f] = render_frame(person, state, size)
    return Clip(
        frames=frames,
        audio=wave.astype(np.float32),
        sample_rate=SAMPLE_RATE,
        fps=fps,
        mouth=drawn,
        blink=blink | (closed > 0.5),
        speaking=speaking,
        block_actions=actions,
        prompts=prompts,
        main_prompt=main,
        avatar=person,
        voice=voice,
        motion=motion,
        mouth_xy=mouth_xy,
    )


def frame_rms(
    wave: np.ndarray, num_frames: int, fps: float = FPS, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """``[num_frames]`` RMS of the audio under each video frame."""
    hop = sample_rate / fps
    return np.array(
        [
            np.sqrt(np.mean(np.square(wave[int(i * hop) : int((i + 1) * hop)])) + 1e-12)
            for i in range(num_frames)
        ],
        np.float32,
    )


def _loudness_opening(wave: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
    """Mouth opening from loudness alone (for given audio without a phoneme timeline)."""
    rms = frame_rms(wave, num_frames, fps)
    level = np.percentile(rms[rms > 1e-4], 90) if np.any(rms > 1e-4) else 1.0
    return (np.clip(rms / level, 0, 1) * (rms > 0.02 * level)).astype(np.float32)
