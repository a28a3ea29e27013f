"""A tiny CNN that reads the synthetic avatar family: mouth opening, closed eyes, accessories, and the
face state the timed actions move (smile, brows, wide eyes, head position).

Nothing to download: it is trained here on rendered frames whose ground truth is known
(``synth.make_clip``), with blur/noise/colour augmentation so it also reads decoded (slightly soft)
frames. Its own accuracy on held-out people is measured and stored with its weights, so every metric
built on it says how far to trust it.

    python -m liveact.eval train-reader --out runs/reader --steps 2500
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from liveact.train.synth import MOTION

logger = logging.getLogger(__name__)

ACCESSORIES = ("glasses", "earrings", "hat")  # three classes each (none / two styles)
# Head offsets are a few hundredths of the frame: scaled up so every motion target is of order one.
MOTION_SCALE = torch.tensor([1.0, 1.0, 1.0, 20.0, 20.0])


class AvatarReader(nn.Module):
    """``[N, 3, H, W]`` frames in [-1, 1] -> mouth opening, eyes-closed logit, accessory logits and the
    face state of the timed actions (``MOTION``: smile, brows, eye_wide, head dx, dy)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width

        def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        # Stride 16 at the end keeps an 8x8 map at 128^2: the mouth (a few pixels tall) is still resolved
        # at stride 4-8, where most of the width sits.
        self.trunk = nn.Sequential(
            *conv(3, w // 2, 2),
            *conv(w // 2, w, 2),
            *conv(w, 2 * w, 1),
            *conv(2 * w, 3 * w, 2),
            *conv(3 * w, 3 * w, 1),
            *conv(3 * w, 4 * w, 2),
        )
        feat = 8 * w  # max- and mean-pooled
        self.mouth = nn.Linear(feat, 1)
        self.eyes = nn.Linear(feat, 1)
        self.accessories = nn.Linear(feat, 3 * len(ACCESSORIES))
        self.motion = nn.Linear(feat, len(MOTION))

    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> pooled features ``[N, 8 * width]``: max-pooled (small parts count) and
        mean-pooled (where the head is)."""
        x = self.trunk(frames)
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions: ``mouth`` ``[N]`` in [0, 1], ``eyes_closed`` ``[N]`` logit, ``accessories``
        ``[N, 3, 3]`` logits (accessory, class), ``motion`` ``[N, len(MOTION)]`` (head offsets scaled by
        ``MOTION_SCALE``)."""
        f = self.features(frames)
        return {
            "mouth": torch.sigmoid(self.mouth(f))[:, 0],
            "eyes_closed": self.eyes(f)[:, 0],
            "accessories": self.accessories(f).view(-1, len(ACCESSORIES), 3),
            "motion": self.motion(f),
        }

    @torch.no_grad()
    def read(self, frames: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
        """Read uint8 frames ``[F, H, W, 3]``: ``mouth`` ``[F]``, ``eyes_closed`` ``[F]`` (probability),
        ``accessories`` ``[F, 3]`` (predicted class per accessory), ``motion`` ``[F, len(MOTION)]`` (face
        state; head offsets as fractions of the frame)."""
        outs: dict[str, list] = {"mouth": [], "eyes_closed": [], "accessories": [], "motion": []}
        for i in range(0, len(frames), batch):
            x = (
                torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])).permute(0, 3, 1, 2).float()
                / 127.5
                - 1
            )
            p = self(x)
            outs["mouth"].append(p["mouth"].numpy())
            outs["eyes_closed"].append(torch.sigmoid(p["eyes_closed"]).numpy())
            outs["accessories"].append(p["accessories"].argmax(-1).numpy())
            outs["motion"].append((p["motion"] / MOTION_SCALE).numpy())
        return {k: np.concatenate(v) for k, v in outs.items()}

    @classmethod
    def load(cls, folder: str | Path) -> AvatarReader:
        """Load ``reader.safetensors`` from ``folder``."""
        model = cls()
        model.load_state_dict(load_file(str(Path(folder) / "reader.safetensors")))
        return model.eval()


def default_reader_dir() -> Path:
    """The reader shipped with the package (trained by ``train-reader`` on the Nano autoencoder's frames)."""
    return Path(__file__).resolve().parents[1] / "assets" / "reader"


def labelled_frames(
    seeds: range, size: int = 128, held_out: bool = False, autoencoder: Path | None = None
) -> dict[str, np.ndarray]:
    """Frames and labels of one-block clips (actions forced in most, so closed eyes and wide mouths appear).

    With ``autoencoder``, every clip is also passed through it (encode + decode) and added with the
    same labels: the reader then reads generated (decoded) frames as well as renders.
    """
    from liveact.train.synth import ACTIONS, make_clip

    tae = None
    if autoencoder is not None:
        from liveact.components.tae import TinyAutoencoder

        tae = TinyAutoencoder.from_file(autoencoder)
    frames, mouth, eyes, acc, motion = [], [], [], [], []
    names = ["", *ACTIONS]
    for seed in tqdm(seeds, desc="render reader data", mininterval=10):
        rng = np.random.default_rng(seed)
        clip = make_clip(seed, num_blocks=1, size=size, held_out=held_out, actions=[str(rng.choice(names))])
        versions = [clip.frames]
        if tae is not None:
            video = torch.from_numpy(clip.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            with torch.no_grad():
                decoded = tae.decode_frames(tae.encode_frames(video))[0]
            versions.append(((decoded.permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy())
        for version in versions:
            frames.append(version)
            mouth.append(clip.mouth)
            eyes.append(clip.blink.astype(np.float32))
            acc.append(np.tile([clip.avatar.accessories[a] for a in ACCESSORIES], (len(clip.frames), 1)))
            motion.append(clip.motion)
    return {
        "frames": np.concatenate(frames),
        "mouth": np.concatenate(mouth),
        "eyes": np.concatenate(eyes),
        "accessories": np.concatenate(acc),
        "motion": np.concatenate(motion),
    }


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Blur, noise and colour jitter: decoded frames are softer and noisier than renders."""
    if rng.random() < 0.7:
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (k[:, None] * k[None]).expand(3, 1, 3, 3)
        for _ in range(int(rng.integers(1, 3))):
            x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    x = x * torch.from_numpy(rng.uniform(0.9, 1.1, (x.shape[0], 3, 1, 1))).float()
    x = x + torch.from_numpy(rng.uniform(-0.08, 0.08, (x.shape[0], 3, 1, 1))).float()
    return x + 0.03 * torch.randn_like(x)


def accuracy(model: AvatarReader, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Held-out accuracy: mouth MAE and correlation, eyes-closed and accessory accuracy, correlation of
    each face-state reading with its ground truth."""
    pred = model.read(data["frames"])

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 1e-8 and b.std() > 1e-8 else 0.0

    return {
        "mouth_mae": float(np.abs(pred["mouth"] - data["mouth"]).mean()),
        "mouth_corr": corr(pred["mouth"], data["mouth"]),
        "eyes_closed_acc": float(((pred["eyes_closed"] > 0.5) == (data["eyes"] > 0.5)).mean()),
        **{
            f"{a}_acc": float((pred["accessories"][:, i] == data["accessories"][:, i]).mean())
            for i, a in enumerate(ACCESSORIES)
        },
        **{f"{m}_corr": corr(pred["motion"][:, i], data["motion"][:, i]) for i, m in enumerate(MOTION)},
    }


def train(
    out: Path, steps: int, clips: int, batch: int, seed: int, autoencoder: Path | None = None
) -> dict[str, float]:
    """Train the reader and write ``reader.safetensors`` + ``reader.json`` (its held-out accuracy on
    renders, and on decoded frames when an autoencoder is given)."""
    torch.manual_seed(seed)
    data = labelled_frames(range(seed, seed + clips), autoencoder=autoencoder)
    val = labelled_frames(range(90_000_000 + seed, 90_000_000 + seed + 40), held_out=True)
    val_decoded = (
        labelled_frames(
            range(90_000_000 + seed, 90_000_000 + seed + 40), held_out=True, autoencoder=autoencoder
        )
        if autoencoder is not None
        else None
    )
    model = AvatarReader()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    frames = torch.from_numpy(data["frames"]).permute(0, 3, 1, 2)
    for step in tqdm(range(steps), desc="reader", mininterval=10):
        idx = rng.integers(0, len(frames), size=batch)
        x = augment(frames[idx].float() / 127.5 - 1, rng)
        motion = torch.from_numpy(data["motion"][idx]) * MOTION_SCALE
        if rng.random() < 0.5:  # a mirrored frame: the head offset to the side changes sign
            x = x.flip(-1)
            motion[:, MOTION.index("dx")] *= -1
        p = model(x)
        loss = (
            F.l1_loss(p["mouth"], torch.from_numpy(data["mouth"][idx])) * 4
            + F.binary_cross_entropy_with_logits(p["eyes_closed"], torch.from_numpy(data["eyes"][idx]))
            + F.cross_entropy(
                p["accessories"].flatten(0, 1), torch.from_numpy(data["accessories"][idx]).long().flatten()
            )
            + F.l1_loss(p["motion"], motion) * 2
        )
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    scores = {"renders": accuracy(model, val)}
    if val_decoded is not None:
        n = len(val["frames"])  # the decoded copies follow the renders clip by clip: keep every other run
        decoded = {
            k: v.reshape(-1, 2, 21, *v.shape[1:])[:, 1].reshape(-1, *v.shape[1:])
            for k, v in val_decoded.items()
        }
        scores["decoded"] = accuracy(model, decoded)
        assert len(decoded["frames"]) == n
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "reader.safetensors"))
    (out / "reader.json").write_text(
        json.dumps(
            {"held_out": scores, "steps": steps, "clips": clips, "autoencoder": str(autoencoder)}, indent=1
        )
    )
    logger.info("reader held-out accuracy: %s", scores)
    return scores


def main(argv: list[str] | None = None) -> None:
    """``python -m liveact.eval train-reader``."""
    p = argparse.ArgumentParser(
        prog="python -m liveact.eval train-reader",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--clips", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--autoencoder", type=Path, default=None, help="also train on frames passed through it")
    a = p.parse_args(argv)
    train(a.out, a.steps, a.clips, a.batch, a.seed, a.autoencoder)
