"""End-to-end parity with the authors' ``generate.py`` on tiny assets in the official formats.

Every folder under ``$LIVEACT_FIXTURES/e2e/`` holding a ``meta.json`` is one case (layout and
tolerances: ``e2e/README.md``). The case runs through our public command line (``liveact.cli.main``)
with the authors' flags from ``meta.json`` plus ``project_options_for_exact_reproduction``, from the
case folder (the flags' paths are relative to it). Every number compared against comes from the
case's files: flags, counts, tensor names and shapes, tolerances.

What is compared:
- the uint8 frames handed to the video writer, with ``frames.npy``;
- the intermediates in ``expected.safetensors``, seen through ``LiveActPipeline.trace``;
- the frame count of the written mp4 (the audio's length in frames), and its 8x8-pixel means.

A pipeline may generate more blocks than the authors' ``int(seconds / block_seconds) + 1`` so that
the video covers the whole audio (README: equally right); the blocks both produce are compared.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import case_params, load_meta
from safetensors.torch import load_file

from liveact.cli import main
from liveact.components.audio import AUDIO_FPS, load_audio, prepare_speech
from liveact.components.tempo import change_tempo, tempo_argument
from liveact.pipeline import LiveActPipeline
from liveact.sampler import audio_window, block_span
from liveact.video import ProgressiveVideoWriter, read_frames, to_uint8_frames

logger = logging.getLogger(__name__)

CASES = case_params("e2e")
LOWPASS_PIXELS = 8  # the README's mp4 metric: mean abs difference of 8x8-pixel means


class Run:
    """What one CLI run of a case produced: traced tensors, frames handed to the writer, the mp4."""

    def __init__(self) -> None:
        self.traced: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.handed: list[np.ndarray] = []
        self.written = 0
        self.pipe: LiveActPipeline | None = None
        self.mp4: Path | None = None

    def trace(self, name: str, tensor: torch.Tensor) -> None:
        self.traced[name].append(tensor.detach().float().cpu().clone())

    @property
    def frames(self) -> np.ndarray:
        return np.concatenate(self.handed)


def _argv(case: Path, meta: dict, out: Path) -> list[str]:
    extra = [token for option in meta["project_options_for_exact_reproduction"] for token in option.split()]
    return [*meta["generate_py_argv"], *extra, "--output_dir", str(out)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Run]:
    """Run each case once per module; tests of the same case share the run."""
    done: dict[Path, Run] = {}

    def get(case: Path) -> Run:
        if case in done:
            return done[case]
        run = Run()
        original_load = LiveActPipeline.from_pretrained
        original_write = ProgressiveVideoWriter.write

        def from_pretrained(*args: object, **kwargs: object) -> LiveActPipeline:
            pipe = original_load(*args, **kwargs)
            pipe.trace = run.trace
            run.pipe = pipe
            return pipe

        def write(writer: ProgressiveVideoWriter, frames: torch.Tensor) -> int:
            run.handed.append(to_uint8_frames(frames))
            sent = original_write(writer, frames)
            run.written += sent
            return sent

        out = tmp_path_factory.mktemp(case.name)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(case)
            mp.setattr(LiveActPipeline, "from_pretrained", from_pretrained)
            mp.setattr(ProgressiveVideoWriter, "write", write)
            assert main(_argv(case, load_meta(case), out)) == 0
        mp4s = sorted(out.glob("*.mp4"))
        assert len(mp4s) == 1, mp4s
        run.mp4 = mp4s[0]
        done[case] = run
        return run

    return get


def _common_blocks(meta: dict, run: Run) -> int:
    """Blocks both pipelines generate, after checking our block count is one of the two allowed."""
    ours, theirs = len(run.traced["latent"]), meta["num_blocks"]
    if ours != theirs:
        # Allowed only when ours is the smallest count whose frames cover the audio.
        seconds_frames = meta["audio"]["seconds"] * meta["flags"]["fps"]
        frames = [run.pipe.frames_of_block(k) for k in range(ours)]
        assert sum(frames) >= math.floor(seconds_frames), (ours, theirs, frames)
        assert sum(frames[:-1]) < math.ceil(seconds_frames), (ours, theirs, frames)
    return min(ours, theirs)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _our_intermediates(case: Path, meta: dict, run: Run, expected: dict) -> dict[str, torch.Tensor]:
    """Our tensor for every name in ``expected`` (a name we cannot place fails the test)."""
    prompts = [p["name"] for p in meta["prompts"]]
    traced = run.traced
    blocks = _common_blocks(meta, run)
    ours: dict[str, torch.Tensor] = {}
    for name in expected:
        if name.startswith(("t5_input_ids_", "t5_attention_mask_")):
            field = "t5_input_ids" if name.startswith("t5_input_ids_") else "t5_attention_mask"
            prompt = name[len(field) + 1 :]
            ours[name] = traced[field][0][prompts.index(prompt)]
        elif name.startswith("t5_context_"):
            ours[name] = traced["t5_context"][prompts.index(name[len("t5_context_") :])]
        elif name in ("cond_image", "clip_fea", "y"):
            ours[name] = traced[name][0]
        elif name == "vae_latent_of_cond_video":
            z = expected[name].shape[0]
            ours[name] = traced["y"][0][0, -z:]
        elif name in ("speech_16k", "audio_embedding"):
            ours[name] = _whole_file_audio(case, meta, run)[name]
        elif name == "tempo_output_channel0":
            ours[name] = traced["tempo_output"][0]
        elif name.startswith(tuple(STREAM_PREFIXES)):
            prefix = next(p for p in STREAM_PREFIXES if name.startswith(p))
            k = int(name[len(prefix) :])
            if k < blocks:
                ours[name] = _streamed(run, k)[STREAM_PREFIXES[prefix]]
        elif name.startswith("latent_block"):
            k = int(name[len("latent_block") :])
            if k < blocks:
                ours[name] = traced["latent"][k]
        else:
            pytest.fail(f"{case.name}: expected tensor {name!r} is not one this test knows how to compare")
    return ours


# Per-block streaming-audio tensors of the fixtures -> the pipeline's trace names.
STREAM_PREFIXES = {
    "speech_16k_block": "speech",
    "audio_embedding_block": "audio_embedding",
    "tempo_output_block": "tempo_output",
}


def _streamed(run: Run, block: int) -> dict[str, torch.Tensor]:
    """What the pipeline encoded for block ``block``'s audio window (``--steam_audio``), by trace name.

    The window is the pipeline's own (``audio_window`` of the block); each window is encoded once, so
    blocks that share one (the first two) share its tensors.
    """
    sampler = run.pipe.sampler
    stride = sampler.config.vae_stride[0]
    window = audio_window(block_span(block, sampler.memory_config, stride), sampler.memory_config, stride)
    windows = [tuple(w.tolist()) for w in run.traced["stream_window"]]
    assert window in windows, (block, window, windows)
    i = windows.index(window)
    names = ("stream_slice", *STREAM_PREFIXES.values())
    assert all(len(run.traced[n]) == len(windows) for n in names), {n: len(run.traced[n]) for n in names}
    return {n: run.traced[n][i] for n in names}


def _whole_file_audio(case: Path, meta: dict, run: Run) -> dict[str, torch.Tensor]:
    """The 16 kHz speech and its embedding the pipeline encoded (whole-file mode).

    With ``--steam_audio`` the pipeline encodes per block only; the authors' ``generate.py`` still
    encodes the whole file first, which is what the fixture records, so it is rebuilt here with the
    pipeline's own audio functions and encoder.
    """
    if not meta["flags"]["steam_audio"]:
        return {"speech_16k": run.traced["speech"][0], "audio_embedding": run.traced["audio_embedding"][0]}
    wave, sr = load_audio(case / meta["audio"]["file"])
    speech = prepare_speech(wave, sr, meta["flags"]["fps"])
    return {"speech_16k": speech, "audio_embedding": run.pipe.audio_encoder.encode(speech).float().cpu()}


def _tolerance_keys(name: str) -> tuple[str | None, str | None]:
    """(max-abs key, rel-L2 key) in ``meta['tolerances']`` for an expected tensor; None = exact."""
    if name.startswith(("t5_input_ids_", "t5_attention_mask_")):
        return None, None
    if name.startswith("t5_context_"):
        return "t5_context_max_abs", None
    if name.startswith("latent_block"):
        return "latent_max_abs", "latent_rel_l2"
    name = next((p for p in STREAM_PREFIXES if name.startswith(p)), name)
    return {
        "cond_image": ("cond_image_max_abs", None),
        "clip_fea": ("clip_fea_max_abs", None),
        "y": ("y_max_abs", None),
        "vae_latent_of_cond_video": ("y_max_abs", None),
        # The tempo output is the first stage of speech_16k; it has no key of its own.
        "tempo_output_channel0": ("speech_16k_max_abs", None),
        "tempo_output_block": ("speech_16k_max_abs", None),
        "speech_16k_block": ("speech_16k_max_abs", None),
        "audio_embedding_block": ("audio_embedding_max_abs", None),
        "speech_16k": ("speech_16k_max_abs", None),
        "audio_embedding": ("audio_embedding_max_abs", None),
    }[name]


@pytest.mark.parametrize("case", CASES)
def test_intermediates_match(case: Path, runs: Callable[[Path], Run]) -> None:
    meta, expected = load_meta(case), load_file(case / "expected.safetensors")
    tol = meta["tolerances"]
    assert tol["token_ids"] == "exact"
    run = runs(case)
    ours = _our_intermediates(case, meta, run, expected)
    failures = []
    for name, theirs in expected.items():
        if name not in ours:  # a block only the authors generate
            failures.append(f"{name}: not generated")
            continue
        abs_key, rel_key = _tolerance_keys(name)
        if abs_key is None:
            if not torch.equal(ours[name].to(theirs.dtype), theirs):
                failures.append(f"{name}: token ids differ")
            continue
        err, rel = _max_abs(ours[name], theirs.float()), _rel_l2(ours[name], theirs.float())
        logger.info("%s %s: max abs %.3g, rel L2 %.3g", case.name, name, err, rel)
        if err > tol[abs_key]:
            failures.append(f"{name}: max abs {err:.3g} > {tol[abs_key]}")
        if rel_key is not None and rel > tol[rel_key]:
            failures.append(f"{name}: rel L2 {rel:.3g} > {tol[rel_key]}")
    assert not failures, f"{case.name}: " + "; ".join(failures)


@pytest.mark.parametrize("case", CASES)
def test_tempo_calls_match(case: Path, runs: Callable[[Path], Run]) -> None:
    """Every sox call of the authors' run: effect argument, rate, input slice and output length.

    The authors' first call stretches the whole file (all channels; ``generate.py`` encodes it even
    with ``--steam_audio``); with ``--steam_audio`` one more call per block stretches that block's
    slice of channel 0, which the pipeline's own slices (traced) must equal.
    """
    meta = load_meta(case)
    fps = meta["flags"]["fps"]
    wave, sr = load_audio(case / meta["audio"]["file"])
    calls = meta["tempo_calls"]
    for call in calls:
        assert call["effects"] == [["tempo", tempo_argument(AUDIO_FPS / fps)]]
        assert call["sr"] == sr
    assert calls[0]["in_shape"] == list(wave.shape)
    assert calls[0]["out_shape"] == list(change_tempo(wave, sr, AUDIO_FPS / fps).shape)
    if not meta["flags"]["steam_audio"]:
        assert len(calls) == 1
        return
    run = runs(case)
    assert len(calls) == 1 + meta["num_blocks"]
    for k in range(_common_blocks(meta, run)):
        streamed = _streamed(run, k)
        lo, hi = streamed["stream_slice"].tolist()
        assert calls[1 + k]["in_shape"] == [1, hi - lo], (k, calls[1 + k]["in_shape"], hi - lo)
        assert calls[1 + k]["out_shape"] == [1, streamed["tempo_output"].shape[-1]], k


@pytest.mark.parametrize("case", CASES)
def test_frames_match(case: Path, runs: Callable[[Path], Run]) -> None:
    meta, tol = load_meta(case), load_meta(case)["tolerances"]
    theirs = np.load(case / meta["frames_file"])
    assert theirs.shape[0] == meta["frames_generated"]
    run = runs(case)
    ours = run.frames
    blocks = _common_blocks(meta, run)
    common = sum(run.pipe.frames_of_block(k) for k in range(blocks))
    assert tol["frame_counts"] == "exact"
    assert common == min(len(ours), len(theirs)), (common, len(ours), len(theirs))
    assert ours.shape[1:] == theirs.shape[1:]
    diff = np.abs(ours[:common].astype(np.int16) - theirs[:common].astype(np.int16))
    logger.info(
        "%s frames: %d compared (ours %d, theirs %d), max abs %d, mean abs %.4f, %.4f%% differ",
        case.name,
        common,
        len(ours),
        len(theirs),
        diff.max(),
        diff.mean(),
        100 * (diff > 0).mean(),
    )
    assert diff.max() <= tol["frames_max_abs_levels"], diff.max()
    assert diff.mean() <= tol["frames_mean_abs_levels"], diff.mean()
    assert (diff > 0).mean() <= tol["frames_fraction_differing"], (diff > 0).mean()


def _lowpass(frames: np.ndarray) -> np.ndarray:
    n, h, w, c = frames.shape
    p = LOWPASS_PIXELS
    crop = frames[:, : h - h % p, : w - w % p].astype(np.float64)
    return crop.reshape(n, h // p, p, w // p, p, c).mean(axis=(2, 4))


@pytest.mark.parametrize("case", CASES)
def test_mp4_length_and_content(case: Path, runs: Callable[[Path], Run]) -> None:
    meta = load_meta(case)
    tol, fps = meta["tolerances"], meta["flags"]["fps"]
    allowed = {math.floor(meta["audio"]["seconds"] * fps), math.ceil(meta["audio"]["seconds"] * fps)}
    # The authors' -shortest mux keeps what both streams cover: their blocks can stop before the audio.
    assert meta["mp4_frames_after_mux"] <= min(max(allowed), meta["frames_generated"])
    run = runs(case)
    decoded = read_frames(run.mp4)
    assert run.written in allowed and len(decoded) == run.written, (run.written, len(decoded), allowed)
    theirs = np.load(case / meta["frames_file"])
    n = min(len(decoded), len(theirs))
    err = decoded[:n].astype(np.float64) - theirs[:n]
    psnr = 10 * math.log10(255.0**2 / max(float((err**2).mean()), 1e-12))
    lowpass = float(np.abs(_lowpass(decoded[:n]) - _lowpass(theirs[:n])).mean())
    logger.info(
        "%s mp4: %d frames written, PSNR %.2f dB, 8x8 low-pass mean abs %.4f "
        "(authors' export: %.2f dB, %.4f)",
        case.name,
        run.written,
        psnr,
        lowpass,
        meta["authors_mp4_psnr_db"],
        meta["authors_mp4_lowpass_mean_abs"],
    )
    assert psnr >= meta["authors_mp4_psnr_db"] - tol["cli_mp4_psnr_margin_db"], psnr
    limit = (
        meta["authors_mp4_lowpass_mean_abs"] * tol["cli_mp4_lowpass_factor"]
        + tol["cli_mp4_lowpass_slack_levels"]
    )
    assert lowpass <= limit, (lowpass, limit)
